from django.apps import AppConfig


class NotifyConfig(AppConfig):
    name = "notify"
    verbose_name = "Notifications"
    # What the roles (accounts.roles) get of this app: operators keep their own preferences.
    role_permissions = {
        "operators": ("notify.view_notificationpreference", "notify.change_notificationpreference"),
    }

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from events.event_store import event_store
        from events.lifecycle import run_in_server

        from .conf import notify_settings
        from .models import WebhookEndpoint
        from .runner import notify_forever
        from .webhooks import delivery_signal

        notify_settings()  # a bad setting stops the server at start-up, naming itself
        # The store is the outbox: its commits wake the delivery worker, which queues from it.
        event_store.add_commit_listener(delivery_signal.committed)
        # Only the worker is woken here (no business logic): it reads the endpoints again.
        for signal in (post_save, post_delete):
            signal.connect(
                delivery_signal.invalidate, sender=WebhookEndpoint, dispatch_uid=f"notify.{signal}"
            )
        run_in_server(notify_forever)
