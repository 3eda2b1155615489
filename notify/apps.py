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
        from .webhooks import endpoint_cache, outbox_record_events

        notify_settings()  # a bad setting stops the server at start-up, naming itself
        # The outbox rows commit in the same transaction as the events they carry.
        event_store.add_batch_hook(outbox_record_events)
        event_store.add_commit_listener(endpoint_cache.committed)
        # Only the cache is told here (no business logic): the next batch reloads the endpoints.
        for signal in (post_save, post_delete):
            signal.connect(endpoint_cache.invalidate, sender=WebhookEndpoint, dispatch_uid=f"notify.{signal}")
        run_in_server(notify_forever)
