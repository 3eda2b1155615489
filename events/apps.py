from collections.abc import Callable

from django.apps import AppConfig
from django.conf import settings

# Called (with no argument) when another process says it committed events, so that this process's
# readers look now rather than at their next poll. The live feed adds its wake-up here.
REMOTE_COMMIT_WAKERS: list[Callable[[], object]] = []


def wake_on_remote_commit(position: int) -> None:
    """Wake every reader registered in REMOTE_COMMIT_WAKERS (on the bus loop; each must be quick)."""
    for wake in list(REMOTE_COMMIT_WAKERS):
        wake()


async def start_distributed_bus() -> None:
    """Under Daphne: connect the bus's transport at start-up (it keeps reconnecting if Redis is away)."""
    from .event_bus import event_bus

    if event_bus.transport is not None:
        await event_bus.transport.initialize()


class EventsConfig(AppConfig):
    name = "events"
    verbose_name = "Events"
    # What the roles (accounts.roles) get of this app.
    role_permissions = {
        "operators": ("events.view_storedevent",),
        "auditors": ("events.view_storedevent",),
        "agents": ("events.publish_events",),
    }

    def ready(self) -> None:
        from . import signals
        from .conf import bus_settings
        from .event_bus import event_bus

        config = bus_settings()
        event_bus.configure(
            max_queue_size=config.max_queue_size,
            overflow=config.overflow,  # type: ignore[arg-type]
            handler_timeout=config.handler_timeout,
            max_stats_types=settings.EVENT_STATS_MAX_TYPES,
        )
        signals.connect()
        signals.forget_tokens_on_remote_changes()
        if settings.REDIS_URL:
            self._distribute_bus(settings.REDIS_URL, config.redis_channel)

    @staticmethod
    def _distribute_bus(redis_url: str, channel: str) -> None:
        """Every process of the deployment shares its events and tells the others of its commits."""
        from .event_bus import event_bus
        from .event_store import event_store
        from .lifecycle import run_in_server
        from .redis_transport import RedisTransport

        transport = RedisTransport(redis_url, channel=channel)
        event_bus.set_transport(transport)
        event_store.add_commit_listener(transport.announce_commit)
        if event_store.wake_readers not in REMOTE_COMMIT_WAKERS:
            REMOTE_COMMIT_WAKERS.append(event_store.wake_readers)
        transport.on_remote_commit(wake_on_remote_commit)
        # Under Daphne, subscribe at start-up so the other processes' events are heard from the start
        # (a script or command only sends: its first publish starts the relay).
        run_in_server(start_distributed_bus)
