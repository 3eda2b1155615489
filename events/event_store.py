"""The durable event store: `event_store`, the store's writer (events.store_writer) with its readers
(events.store_reader) in one object, as the contract names it.

The writer subscribes to the bus and commits every event with its position; the readers read them back
in position order (`get_events`, `replay`, and `read`, which follows the store live). After each commit
of this process the writer wakes the live readers; `wake_readers()` does so when another process says
it committed events.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from .base import BaseEvent
from .event_bus import EventBus, event_bus
from .store_reader import MAX_READ_LIMIT, POLL_INTERVAL_S, StoreReader, row_to_event
from .store_writer import (
    BATCH_SIZE,
    FLUSH_INTERVAL_S,
    MAX_BATCH,
    MAX_BUFFER,
    STORE_PRIORITY,
    EventRefused,
    EventStoreError,
    Positions,
    StoreGroup,
    StoreWriter,
    store_together,
)

__all__ = [
    "BATCH_SIZE",
    "FLUSH_INTERVAL_S",
    "MAX_BATCH",
    "MAX_BUFFER",
    "MAX_READ_LIMIT",
    "POLL_INTERVAL_S",
    "STORE_PRIORITY",
    "EventRefused",
    "EventStore",
    "EventStoreError",
    "Positions",
    "StoreGroup",
    "event_store",
    "row_to_event",
    "store_together",
]


class EventStore(StoreWriter):
    """The store's writer, with its readers' methods: persists every event published on the bus, and
    reads them back in position order."""

    def __init__(self, **writer_options: Any) -> None:
        self.reader = StoreReader()
        super().__init__(wake_readers=self.reader.wake, **writer_options)

    def wake_readers(self) -> None:
        """Make every live `read()` in this process look for new events now (thread-safe).

        Called when another process says it committed events, so readers need not wait for their poll.
        """
        self.reader.wake()

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
        return await self.reader.get_events(
            session_id=session_id,
            event_type=event_type,
            correlation_id=correlation_id,
            after_position=after_position,
            limit=limit,
            event_category=event_category,
        )

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
        return await self.reader.replay(
            session_id=session_id,
            event_type=event_type,
            correlation_id=correlation_id,
            after_position=after_position,
            limit=limit,
            event_category=event_category,
            bus=bus,
        )

    def read(
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
        """Every stored event after `after_position`, then live ones as they are committed (see
        `StoreReader.read`)."""
        return self.reader.read(
            after_position,
            session_id=session_id,
            event_type=event_type,
            correlation_id=correlation_id,
            event_category=event_category,
            live=live,
            page_size=page_size,
            poll_interval=poll_interval,
        )


event_store = EventStore()
