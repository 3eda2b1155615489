from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "audit"
    verbose_name = "Audit"
    # What the roles (accounts.roles) get of this app.
    role_permissions = {"auditors": ("audit.view_auditentry", "audit.export_audit", "audit.verify_audit")}

    def ready(self) -> None:
        from .subscribers import install_subscribers

        install_subscribers()
