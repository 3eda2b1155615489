from django.apps import AppConfig


class EventsConfig(AppConfig):
    name = "events"
    verbose_name = "Events"

    def ready(self) -> None:
        from . import signals
        from .conf import bus_settings
        from .event_bus import event_bus

        config = bus_settings()
        event_bus.configure(
            max_queue_size=config.max_queue_size,
            overflow=config.overflow,  # type: ignore[arg-type]
            handler_timeout=config.handler_timeout,
        )
        signals.connect()
