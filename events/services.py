"""Writes of the events app: publishing events from outside, and events recorded with a change."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from channels.db import database_sync_to_async
from django.db import DatabaseError, transaction

from core.errors import ApplicationError

from .base import BaseEvent
from .event_bus import event_bus
from .event_store import EventRefused, EventStoreError, event_store, store_together

logger = logging.getLogger("events")


async def events_publish(*, events: list[BaseEvent], actor: str | None) -> list[int | None]:
    """Publish validated events from outside (REST, OTLP) as `actor` and wait for their commit.

    All or nothing: the store writes them in one transaction. Returns their positions in list order
    (None for one a middleware dropped). A database that is away is a 503 `store_unavailable` (the same
    request again is safe: idempotent on event_id); a database that refuses an event is a 400.
    """
    for event in events:
        # Who acted is who authenticated, whatever the event's data says.
        event.actor = actor
    store_together(events)
    publishing = asyncio.ensure_future(event_bus.publish_many(events, wait_for_handlers=True))
    # Already validated and on its way: a client that hangs up must not stop a list half-published.
    publishing.add_done_callback(_consume_outcome)
    try:
        # Answered within EVENTS_COMMIT_WAIT_S whatever the database does: a client kept waiting longer
        # (an outage, a database that hangs) gets a 503 to send the same events again; they stay on their
        # way and are stored once (idempotent on event_id).
        results = await asyncio.wait_for(asyncio.shield(publishing), _commit_wait_s())
    except TimeoutError as error:
        raise ApplicationError(
            "The event store did not commit the events in time; send the same events again (it is "
            "idempotent on event_id).",
            code="store_unavailable",
            status=503,
            headers={"Retry-After": "1"},
        ) from error
    except EventRefused as error:
        # The database refused an event itself: none of the request's events is stored, and sending
        # the same body again would fail the same way.
        raise ApplicationError(
            f"The store refused the events, and stored none of them: {error}",
            code="invalid_event",
            status=400,
        ) from error
    except (EventStoreError, DatabaseError) as error:
        logger.warning("the store could not commit %d published events: %s", len(events), error)
        raise ApplicationError(
            "The event store could not commit the events; send the same events again (it is idempotent "
            "on event_id).",
            code="store_unavailable",
            status=503,
            headers={"Retry-After": "1"},
        ) from error
    positions: list[int | None] = [event.position for event in events]
    unknown = [e.event_id for e, p, ok in zip(events, positions, results, strict=True) if ok and p is None]
    if unknown:
        # A middleware replaced the event object: the store numbered the replacement.
        from .selectors import stored_positions

        found = await database_sync_to_async(stored_positions, thread_sensitive=False)(event_ids=unknown)
        positions = [
            found.get(e.event_id) if p is None else p for e, p in zip(events, positions, strict=True)
        ]
    return positions


def _commit_wait_s() -> float:
    from django.conf import settings

    return float(getattr(settings, "EVENTS_COMMIT_WAIT_S", 2.0))


def _consume_outcome(task: asyncio.Future[Any]) -> None:
    # When the client is gone nobody awaits the task; its failure is logged by the store already.
    if not task.cancelled():
        task.exception()


def events_record(*, events: list[BaseEvent]) -> list[int]:
    """Store `events` in the caller's transaction and publish them on the bus once it commits.

    For changes whose record must not come apart from them: the row, its stored event and its audit
    entry (the store's batch hooks run here too) commit together or not at all. Returns the positions.
    """
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("events_record needs the caller's transaction (transaction.atomic)")
    for event in events:
        event_bus.stamp(event)
    positions = event_store.store_in_transaction(events)
    # One hand-over to the bus's loop for them all: the committing thread waits once, not once each.
    published = list(events)
    transaction.on_commit(lambda: event_bus.publish_many_sync(published))
    return positions
