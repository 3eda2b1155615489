"""The live feed: one reader per process follows the event store and hands each new event to every
WebSocket connection of the process, through a bounded queue per connection.

Why the store and not the bus: a live event must carry its `position` (the client resumes from it), and
a position exists only once the event is committed. Following the store in position order also makes
events stored by other processes (another Daphne, `simulate_agents`, a script) arrive here in the same
order with no gap and no duplicate; the distributed bus only shortens the wait (it wakes the reader when
another process commits), and a poll every LIVE_FEED["POLL_INTERVAL"] seconds covers a process that
hears nothing (no Redis). Each event is serialized once per process, whatever the number of clients.

A connection whose client reads slower than events arrive fills its queue; it is then detached and
told where it stopped (the consumer sends `{"type": "gap", "after": P}`), so a slow client costs a
bounded amount of memory and loses nothing it cannot read back from the store.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from .base import BaseEvent
from .event_store import event_store

logger = logging.getLogger("events")

# The filters a live feed takes, as the read API names them.
FEED_FILTERS = ("session_id", "correlation_id", "event_type", "event_category")


@dataclass(frozen=True)
class LiveSettings:
    queue_size: int
    poll_interval: float


def live_settings() -> LiveSettings:
    """settings.LIVE_FEED with defaults, validated so a bad value names itself."""
    raw: dict[str, Any] = getattr(settings, "LIVE_FEED", {}) or {}
    queue_size = raw.get("QUEUE_SIZE", 1000)
    if not isinstance(queue_size, int) or isinstance(queue_size, bool) or queue_size < 1:
        raise ImproperlyConfigured(f"LIVE_FEED['QUEUE_SIZE'] must be a positive integer, not {queue_size!r}")
    poll_interval = raw.get("POLL_INTERVAL", 0.5)
    if not isinstance(poll_interval, int | float) or isinstance(poll_interval, bool) or poll_interval <= 0:
        raise ImproperlyConfigured(
            f"LIVE_FEED['POLL_INTERVAL'] must be a positive number, not {poll_interval!r}"
        )
    return LiveSettings(queue_size=queue_size, poll_interval=float(poll_interval))


def event_frame(event: BaseEvent) -> str:
    """The WebSocket frame of a stored event: {"type": "event", "position": N, "event": {...}}."""
    return json.dumps(
        {"type": "event", "position": event.position, "event": event.to_dict()},
        ensure_ascii=False,
        separators=(",", ":"),
    )


class Listener:
    """One connection's view of the feed: its filters and a bounded queue of (event, frame)."""

    def __init__(
        self,
        *,
        filters: dict[str, str] | None = None,
        event_types: Iterable[str] | None = None,
        queue_size: int | None = None,
    ) -> None:
        self.filters = {key: value for key, value in (filters or {}).items() if value}
        self.event_types = frozenset(event_types) if event_types is not None else None
        self.queue_size = queue_size or live_settings().queue_size
        self.queue: deque[tuple[BaseEvent, str]] = deque()
        self.overflowed = False
        self.ready = asyncio.Event()

    def matches(self, event: BaseEvent) -> bool:
        if self.event_types is not None and event.event_type not in self.event_types:
            return False
        for key, value in self.filters.items():
            if getattr(event, key) != value:
                return False
        return True

    def offer(self, event: BaseEvent, frame: str) -> None:
        """Queue `event` if it matches; on overflow drop the queue and mark the listener (the tail calls)."""
        if self.overflowed or not self.matches(event):
            return
        if len(self.queue) >= self.queue_size:
            self.queue.clear()
            self.overflowed = True
            live_feed.overflows += 1
        else:
            self.queue.append((event, frame))
        self.ready.set()

    async def next_batch(self) -> list[tuple[BaseEvent, str]]:
        """Wait until something is queued (or the queue overflowed); take everything queued."""
        while not self.queue and not self.overflowed:
            self.ready.clear()
            await self.ready.wait()
        batch = list(self.queue)
        self.queue.clear()
        return batch


class LiveFeed:
    """The process's reader of the store, started by the first listener and stopped after the last."""

    def __init__(self) -> None:
        self._listeners: set[Listener] = set()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._position: int | None = None
        self._started: asyncio.Future[int] | None = None
        self.dispatched = 0
        self.overflows = 0

    @property
    def position(self) -> int | None:
        """The last position handed to the listeners (None before the reader started)."""
        return self._position

    def __len__(self) -> int:
        return len(self._listeners)

    def get_stats(self) -> dict[str, Any]:
        """This process's feed: connections following it, events handed out, queues that overflowed."""
        return {
            "connections": len(self._listeners),
            "position": self._position,
            "dispatched": self.dispatched,
            "overflows": self.overflows,
        }

    async def register(self, listener: Listener) -> int:
        """Add `listener`; every event after the returned position will be offered to it."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            self._start(loop)
        assert self._started is not None
        position = await asyncio.shield(self._started)
        # No await between reading the position and adding the listener: the reader runs on this loop.
        self._listeners.add(listener)
        return self._position if self._position is not None else position

    def unregister(self, listener: Listener) -> None:
        """Remove `listener`; the reader stops when none is left."""
        self._listeners.discard(listener)
        if not self._listeners and self._task is not None:
            self._task.cancel()
            self._task = None
            self._started = None
            self._position = None

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._task is not None and not self._task.done() and self._loop is not None:
            if not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._task.cancel)
        self._listeners.clear()  # listeners of another (finished) loop
        self._loop = loop
        self._position = None
        self._started = loop.create_future()
        self._task = loop.create_task(self._run(self._started), name="live-feed-reader")

    async def _run(self, started: asyncio.Future[int]) -> None:
        from core.async_views import off_shared_thread

        from .selectors import last_stored_position

        poll = live_settings().poll_interval
        position: int | None = None
        while True:
            try:
                if position is None:
                    position = await off_shared_thread(last_stored_position)()
                    self._position = position
                    started.set_result(position)
                async for event in event_store.read(after_position=position, poll_interval=poll):
                    self._dispatch(event)
                    position = event.position
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if not started.done():
                    started.set_exception(error)
                    return
                # The database went away: keep the listeners and go on after the last position handed out.
                logger.warning("live feed: reading the store failed (%s); retrying in 1s", error)
                await asyncio.sleep(1.0)

    def _dispatch(self, event: BaseEvent) -> None:
        self._position = event.position
        self.dispatched += 1
        if not self._listeners:
            return
        frame = event_frame(event)
        for listener in self._listeners:
            listener.offer(event, frame)


live_feed = LiveFeed()
