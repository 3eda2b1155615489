"""The audit app's permissions, named once."""

VIEW_AUDIT = "audit.view_auditentry"
EXPORT_AUDIT = "audit.export_audit"
VERIFY_AUDIT = "audit.verify_audit"
