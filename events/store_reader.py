"""The store's readers: stored events by filter, replayed, or read on as they are committed.

They read what events.store_writer committed, through events.selectors in a worker thread (async code
never runs the ORM itself); events.event_store puts the two together as `event_store`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from typing import Any

from .base import BaseEvent
from .event_bus import EventBus, event_bus

MAX_READ_LIMIT = 10_000
POLL_INTERVAL_S = 1.0


class StoreReader:
    """Reads stored events back in position order; live readers are woken by `wake()`."""

    def __init__(self) -> None:
        self._listeners: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def wake(self) -> None:
        """Make every live `read()` in this process look for new events now (thread-safe)."""
        for loop, wake in list(self._listeners):
            if loop.is_closed():
                self._listeners.discard((loop, wake))
            else:
                loop.call_soon_threadsafe(wake.set)

    async def get_events(
        self,
        session_id: str | None = None,
        event_type: str | None = None,
        correlation_id: str | None = None,
        after_position: int | None = None,
        limit: int | None = 1000,
        event_category: str | None = None,
    ) -> list[BaseEvent]:
        """Stored events matching the filters, in position order, each with its `position`."""
        from .selectors import stored_events_after

        filters = _filters(session_id, event_type, correlation_id, event_category)
        limit = _clean_limit(limit)
        after = _clean_position(after_position)
        rows = await _in_thread(stored_events_after, after=after, limit=limit, **filters)
        return [row_to_event(row) for row in rows]

    async def replay(
        self,
        session_id: str | None = None,
        event_type: str | None = None,
        correlation_id: str | None = None,
        after_position: int | None = None,
        limit: int | None = 1000,
        event_category: str | None = None,
        bus: EventBus = event_bus,
    ) -> int:
        """Publish stored events again, marked `replayed`: the store, metrics and audit do not count them."""
        events = await self.get_events(
            session_id=session_id,
            event_type=event_type,
            correlation_id=correlation_id,
            after_position=after_position,
            limit=limit,
            event_category=event_category,
        )
        for event in events:
            event.replayed = True
            await bus.publish(event, wait_for_handlers=True)
        return len(events)

    async def read(
        self,
        after_position: int = 0,
        *,
        session_id: str | None = None,
        event_type: str | None = None,
        correlation_id: str | None = None,
        event_category: str | None = None,
        live: bool = True,
        page_size: int = 500,
        poll_interval: float = POLL_INTERVAL_S,
    ) -> AsyncGenerator[BaseEvent, None]:
        """Every stored event after `after_position`, then live ones as they are committed.

        No gap and no duplicate at the hand-over: the live part reads the store too, after the last
        position yielded, woken by this process's commits and, for other processes', every
        `poll_interval` seconds. With `live=False`, stops when it has caught up.
        """
        from .selectors import stored_events_after

        filters = _filters(session_id, event_type, correlation_id, event_category)
        last = _clean_position(after_position) or 0
        wake = asyncio.Event()
        listener = (asyncio.get_running_loop(), wake)
        self._listeners.add(listener)
        try:
            while True:
                wake.clear()
                rows = await _in_thread(stored_events_after, after=last, limit=page_size, **filters)
                for row in rows:
                    last = row["position"]
                    yield row_to_event(row)
                if len(rows) == page_size:
                    continue
                if not live:
                    return
                try:
                    await asyncio.wait_for(wake.wait(), poll_interval)
                except TimeoutError:
                    pass
        finally:
            self._listeners.discard(listener)


def _filters(
    session_id: str | None, event_type: str | None, correlation_id: str | None, event_category: str | None
) -> dict[str, str]:
    given = {
        "session_id": session_id,
        "event_type": event_type,
        "correlation_id": correlation_id,
        "event_category": event_category,
    }
    return {key: str(value) for key, value in given.items() if value is not None}


def _clean_limit(limit: int | None) -> int:
    if limit is None:
        return MAX_READ_LIMIT
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"limit must be a positive integer, not {limit!r}")
    return min(limit, MAX_READ_LIMIT)


def _clean_position(position: int | None) -> int | None:
    if position is None:
        return None
    if not isinstance(position, int) or isinstance(position, bool) or position < 0:
        raise ValueError(f"after_position must be a non-negative integer, not {position!r}")
    return position


def row_to_event(row: dict[str, Any]) -> BaseEvent:
    """A row of `stored_events_after` as the event it stores, with its `position` and `actor`."""
    from .models import row_to_contract_dict

    event = BaseEvent.from_dict_lenient(row_to_contract_dict(row))
    event.actor = row.get("actor")
    return event


async def _in_thread(fn: Callable[..., Any], **kwargs: Any) -> Any:
    """Run a selector in a worker thread with a fresh-enough connection (async code never runs ORM)."""
    from core.async_views import off_shared_thread

    return await off_shared_thread(fn)(**kwargs)
