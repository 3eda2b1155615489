"""The event bus shared by every process of a deployment: an `EventBus` with a Redis transport.

`DistributedEventBus(redis_url=..., channel=...)` is what the design document names; the relay itself
(batching to Redis Pub/Sub, deduplication, the outbox, reconnection, commit notices) is
`events.redis_transport.RedisTransport`, which the process-wide `event_bus` is given at start-up when
REDIS_URL is set (`events.apps`), so every module keeps the one bus object it imported.
"""

from __future__ import annotations

from typing import Any

from .event_bus import EventBus
from .redis_transport import (
    CLOSE_FLUSH_TIMEOUT_S,
    DEFAULT_CHANNEL,
    INITIALIZE_TIMEOUT_S,
    RedisTransport,
    RemoteCommitCallback,
)

__all__ = ["DEFAULT_CHANNEL", "DistributedEventBus", "RedisTransport", "make_distributed"]


class DistributedEventBus(EventBus):
    """An `EventBus` whose events also reach every other process's bus on the same Redis channel.

    Without `redis_url` it is a local bus. Start it with `await initialize()` (or let the first publish
    start it), stop it with `await close()` (`shutdown()` does). `publish(event, distribute=False)`
    keeps an event in this process.
    """

    def __init__(
        self, redis_url: str | None = None, *, channel: str = DEFAULT_CHANNEL, **bus_kwargs: Any
    ) -> None:
        self.redis_transport = RedisTransport(redis_url, channel=channel)
        super().__init__(transport=self.redis_transport, **bus_kwargs)

    @property
    def redis_url(self) -> str | None:
        return self.redis_transport.redis_url

    @property
    def channel(self) -> str:
        return self.redis_transport.channel

    @property
    def origin(self) -> str:
        return self.redis_transport.origin

    async def initialize(self, timeout: float = INITIALIZE_TIMEOUT_S) -> bool:
        """Start the relay (idempotent) and wait up to `timeout` s for the subscription.

        Returns whether it is subscribed; never raises because Redis is down: the relay keeps trying.
        """
        return await self.redis_transport.initialize(timeout)

    async def close(self, timeout: float | None = CLOSE_FLUSH_TIMEOUT_S) -> None:
        """Send what is queued for Redis (up to `timeout` s, unless Redis is away), then disconnect.

        Publishing goes on locally; `initialize()` starts distributing again.
        """
        await self.redis_transport.close(timeout)

    def announce_commit(self, position: int) -> None:
        """Tell the other processes that this one committed events up to `position` (thread-safe)."""
        self.redis_transport.announce_commit(position)

    def on_remote_commit(self, callback: RemoteCommitCallback) -> RemoteCommitCallback:
        """Call `callback(position)` (on the bus loop) when another process committed events up to it."""
        return self.redis_transport.on_remote_commit(callback)


def make_distributed(bus: EventBus, redis_url: str, *, channel: str = DEFAULT_CHANNEL) -> RedisTransport:
    """Give `bus` a Redis transport on `redis_url` and `channel` (re-pointing the one it has); return it.

    The transport, not a new bus: every module imported the one process-wide `event_bus` at start-up.
    Re-pointing keeps the wiring made to the transport (the store's commit listener, the remote-commit
    callbacks).
    """
    transport = bus.transport
    if isinstance(transport, RedisTransport):
        transport.configure_redis(redis_url, channel=channel)
        return transport
    transport = RedisTransport(redis_url, channel=channel)
    bus.set_transport(transport)
    return transport
