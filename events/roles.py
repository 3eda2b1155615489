"""The roles of the contract, in one place: each group and the permissions ("app_label.codename") it has.

`python manage.py setup_roles` (events.services.roles_setup) creates the groups and grants these; a
permission listed here must exist after `migrate` (a model's Meta.permissions or a default permission).
"""

OPERATORS = "operators"
AUDITORS = "auditors"
AGENTS = "agents"

ROLES: dict[str, tuple[str, ...]] = {
    # Operators view and decide approval requests; the hitl app adds its permissions here.
    OPERATORS: ("hitl.view_approvalrequest", "hitl.decide_approvalrequest", "events.view_storedevent"),
    AUDITORS: (
        "events.view_storedevent",
        "audit.view_auditentry",
        "audit.export_audit",
        "audit.verify_audit",
    ),
    AGENTS: ("events.publish_events", "hitl.request_approval"),
}

PUBLISH_EVENTS = "events.publish_events"
