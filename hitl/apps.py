from django.apps import AppConfig


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
        decision_waiters.subscribe(event_bus)
        run_in_server(sweep_expired_forever)
