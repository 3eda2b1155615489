from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def check_tool_schemas() -> None:
    """A schema in HITL_TOOL_SCHEMAS that is not a JSON Schema stops the server at start-up, naming the
    tool (rather than turning each edit of that tool into an error)."""
    import jsonschema

    from .conf import RISK_KEYWORD, schema_risk

    schemas: Any = getattr(settings, "HITL_TOOL_SCHEMAS", {}) or {}
    if not isinstance(schemas, dict):
        raise ImproperlyConfigured(
            "HITL_TOOL_SCHEMAS must be a dict: tool name -> its arguments' JSON Schema"
        )
    for name, schema in schemas.items():
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as error:
            raise ImproperlyConfigured(
                f"HITL_TOOL_SCHEMAS[{name!r}] is not a JSON Schema: {error.message}"
            ) from None
        if isinstance(schema, dict) and RISK_KEYWORD in schema and schema_risk(schema) is None:
            raise ImproperlyConfigured(
                f'HITL_TOOL_SCHEMAS[{name!r}]["{RISK_KEYWORD}"] must be "low", "medium" or "high", '
                f"not {schema[RISK_KEYWORD]!r}"
            )


class HitlConfig(AppConfig):
    name = "hitl"
    verbose_name = "Human approval"
    # What the roles (accounts.roles) get of this app.
    role_permissions = {
        "operators": (
            "hitl.view_approvalrequest",
            "hitl.decide_approvalrequest",
            "hitl.change_approvalrule",
            "hitl.view_standingapproval",
        ),
        "agents": ("hitl.request_approval",),
    }

    def ready(self) -> None:
        from events.event_bus import event_bus
        from events.lifecycle import run_in_server

        from .conf import hitl_settings
        from .services import decision_waiters, sweep_expired_forever

        hitl_settings()  # a bad setting stops the server at start-up, naming itself
        check_tool_schemas()
        decision_waiters.subscribe(event_bus)
        run_in_server(sweep_expired_forever)
