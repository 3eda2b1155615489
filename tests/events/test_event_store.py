"""The durable store: commit before return, idempotency, commit-ordered positions, replay, catch-up."""

import asyncio
import threading
import time
import uuid

import pytest
from channels.db import database_sync_to_async
from django.db import DatabaseError, OperationalError, connection, transaction

from audit.models import AuditEntry
from audit.subscribers import metrics_collector
from events.agent_events import AgentErrorOccurredEvent, AgentSwitchedEvent
from events.base import BaseEvent
from events.columns import EVENT_COLUMNS
from events.event_bus import event_bus
from events.event_store import EventStore, EventStoreError, event_store
from events.models import StoredEvent
from events.session_events import SessionCreatedEvent

pytestmark = pytest.mark.django_db(transaction=True)


def tick(n: int, session: str = "s") -> BaseEvent:
    return BaseEvent("tick", "metrics", session_id=session, data={"n": n})


@database_sync_to_async
def stored_rows(**filters):
    return list(
        StoredEvent.objects.filter(**filters).order_by("position").values_list("event_id", "position")
    )


async def settle() -> None:
    await event_bus.drain()
    await event_store.flush()


async def test_wait_for_handlers_returns_only_after_the_event_is_committed():
    event = AgentSwitchedEvent(session_id="s", from_agent="a", to_agent="b")
    await event_bus.publish(event, wait_for_handlers=True)
    # Read on another connection: only committed rows are visible there.
    assert await stored_rows(event_id=event.event_id) == [(uuid.UUID(event.event_id), event.position)]
    assert event.position is not None and event.position >= 1


async def test_fire_and_forget_events_are_committed_soon_without_anyone_waiting():
    events = [tick(n) for n in range(30)]
    for event in events:
        await event_bus.publish(event)
    for _ in range(100):  # poll; the promise is the flush interval, the test only needs "soon"
        await asyncio.sleep(0.05)
        if len(await stored_rows(event_type="tick")) == 30:
            break
    rows = await stored_rows(event_type="tick")
    assert [str(event_id) for event_id, _ in rows] == [e.event_id for e in events]


async def test_the_same_event_id_is_stored_once():
    event = SessionCreatedEvent(session_id="s")
    await event_bus.publish(event, wait_for_handlers=True)
    copy = BaseEvent.from_dict(event.to_dict())
    copy.position = None
    await event_bus.publish(copy, wait_for_handlers=True)
    assert copy.position == event.position
    duplicates = [BaseEvent.from_dict({**event.to_dict(), "position": None}) for _ in range(3)]
    await event_bus.publish_many(duplicates, wait_for_handlers=True)
    assert {d.position for d in duplicates} == {event.position}
    assert len(await stored_rows(event_id=event.event_id)) == 1
    assert event_store.get_stats()["duplicates"] >= 4


async def test_publish_many_stores_in_list_order_and_waits_for_the_commit():
    events = [tick(n) for n in range(1200)]
    results = await event_bus.publish_many(events, wait_for_handlers=True)
    assert results == [True] * 1200
    positions = [e.position for e in events]
    assert None not in positions and positions == sorted(p for p in positions if p is not None)
    assert len(set(positions)) == 1200
    rows = await stored_rows(event_type="tick")
    assert [p for _, p in rows] == positions


def test_positions_follow_commit_order_under_concurrent_writers():
    """Four writers (own connections) commit batches while a reader follows "after the last position".

    With positions from a sequence, a reader could see 10 committed before 9 and skip 9 for ever.
    """
    writers = 4
    batches = 15
    per_batch = 40
    stop = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def write(index: int) -> None:
        store = EventStore()
        try:
            for batch in range(batches):
                store._write_batch([tick(batch * per_batch + n, f"writer-{index}") for n in range(per_batch)])
        except BaseException as error:
            errors.append(error)
        finally:
            connection.close()

    def follow() -> None:
        last = 0
        try:
            while True:
                done = stop.is_set()
                rows = list(
                    StoredEvent.objects.filter(position__gt=last)
                    .order_by("position")
                    .values_list("position", flat=True)
                )
                seen.extend(rows)
                if rows:
                    last = rows[-1]
                elif done:
                    return
                else:
                    # A pause when caught up: a reader spinning on the GIL starves the writers' threads.
                    time.sleep(0.001)
        finally:
            connection.close()

    reader = threading.Thread(target=follow)
    reader.start()
    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    reader.join()
    assert not errors
    total = writers * batches * per_batch
    assert seen == list(range(1, total + 1)), "the reader skipped or repeated a position"
    assert StoredEvent.objects.count() == total


async def test_replay_republishes_marked_events_without_counting_them_twice():
    for event in [
        AgentSwitchedEvent(session_id="r", from_agent="a", to_agent="b"),
        AgentErrorOccurredEvent(session_id="r", agent_type="a", error_message="x"),
        tick(1, "r"),
    ]:
        await event_bus.publish(event)
    await settle()
    metrics = await metrics_collector.aget_metrics()
    audit_count = await database_sync_to_async(AuditEntry.objects.count)()
    seen: list[BaseEvent] = []
    event_bus.subscribe(handler=seen.append)

    assert await event_store.replay(session_id="r") == 3
    await settle()
    assert [e.replayed for e in seen] == [True, True, True]
    assert [e.event_type for e in seen] == ["agent_switched", "agent_error_occurred", "tick"]
    assert all(e.position is not None for e in seen)
    assert len(await stored_rows(session_id="r")) == 3
    assert await metrics_collector.aget_metrics() == metrics
    assert await database_sync_to_async(AuditEntry.objects.count)() == audit_count


async def test_read_hands_over_from_stored_to_live_with_no_gap_and_no_duplicate():
    for n in range(50):
        await event_bus.publish(tick(n))
    await settle()
    received: list[int] = []

    async def follow() -> None:
        async for event in event_store.read(after_position=10, poll_interval=0.2):
            received.append(event.position)
            if len(received) == 140:
                return

    reader = asyncio.ensure_future(follow())
    for burst in range(10):
        for n in range(10):
            await event_bus.publish(tick(100 + burst * 10 + n))
        await asyncio.sleep(0.01)
    await settle()
    await asyncio.wait_for(reader, 20)
    assert received == list(range(11, 151))


async def test_read_with_filters_and_not_live_stops_when_caught_up():
    for n in range(10):
        await event_bus.publish(tick(n, "wanted" if n % 2 else "other"))
    await settle()
    wanted = [e.data["n"] async for e in event_store.read(session_id="wanted", live=False)]
    assert wanted == [1, 3, 5, 7, 9]


async def test_get_events_filters_and_validates():
    await event_bus.publish(AgentSwitchedEvent(session_id="session-123", from_agent="a", to_agent="b"))
    await event_bus.publish(tick(1, "session-123"))
    await settle()
    # The design document's example.
    events = await event_store.get_events(session_id="session-123", event_type="agent_switched")
    assert [type(e).__name__ for e in events] == ["AgentSwitchedEvent"]
    assert events[0].to_dict()["position"] == events[0].position
    assert len(await event_store.get_events(session_id="session-123", limit=1)) == 1
    after = await event_store.get_events(after_position=events[0].position)
    assert [e.event_type for e in after] == ["tick"]
    with pytest.raises(ValueError, match="limit"):
        await event_store.get_events(limit=0)
    with pytest.raises(ValueError, match="after_position"):
        await event_store.get_events(after_position=-1)


def test_events_and_audit_entries_are_append_only_in_the_database():
    event = AgentSwitchedEvent(session_id="s", from_agent="a", to_agent="b")
    event_bus.publish_sync(event, wait_for_handlers=True)
    assert StoredEvent.objects.count() == 1 and AuditEntry.objects.count() == 1
    attempts = [
        lambda: StoredEvent.objects.update(session_id="changed"),
        lambda: StoredEvent.objects.all().delete(),
        lambda: AuditEntry.objects.update(actor="someone"),
        lambda: AuditEntry.objects.all().delete(),
    ]
    for attempt in attempts:
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            attempt()
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute("UPDATE audit_auditentry SET data = '{}'")
    if connection.vendor == "postgresql":
        with (
            pytest.raises(DatabaseError, match="append-only"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute("TRUNCATE events_storedevent")
    assert StoredEvent.objects.get().session_id == "s"
    assert AuditEntry.objects.count() == 1


async def test_a_database_outage_loses_nothing_and_tells_waiting_publishers(monkeypatch):
    original = event_store._write_batch
    failures = {"left": 2}

    def flaky(events):
        if failures["left"]:
            failures["left"] -= 1
            raise OperationalError("server closed the connection unexpectedly")
        return original(events)

    monkeypatch.setattr(event_store, "_write_batch", flaky)
    waited = SessionCreatedEvent(session_id="outage")
    with pytest.raises(EventStoreError, match="unavailable"):
        await event_bus.publish(waited, wait_for_handlers=True)
    for n in range(5):
        await event_bus.publish(tick(n, "outage"))
    await settle()
    # The accepted events are all stored once the database is back, the failed waiter's too.
    assert len(await stored_rows(session_id="outage")) == 6
    assert event_store.get_stats()["write_failures"] == 2


async def test_an_event_the_database_refuses_is_isolated_and_the_rest_are_stored(monkeypatch):
    original = event_store._write_batch
    poison = tick(13, "poison")

    def refuse_poison(events):
        if any(e.event_id == poison.event_id for e in events):
            raise ValueError("the driver cannot encode this row")
        return original(events)

    monkeypatch.setattr(event_store, "_write_batch", refuse_poison)
    others = [tick(n, "poison") for n in range(12)]
    await event_bus.publish_many([*others[:6], poison, *others[6:]])
    await settle()
    again = BaseEvent.from_dict(poison.to_dict())
    with pytest.raises(EventStoreError, match="refused"):
        await event_bus.publish(again, wait_for_handlers=True)
    stored = {str(event_id) for event_id, _ in await stored_rows(session_id="poison")}
    assert stored == {e.event_id for e in others}
    assert event_store.get_stats()["rejected"] == 2


def test_the_writer_inserts_every_column_of_the_stored_event_table():
    assert set(EVENT_COLUMNS) == {field.column for field in StoredEvent._meta.concrete_fields}


async def test_a_commit_of_the_writer_wakes_a_live_reader_at_once():
    """The writer and the reader are two modules; the store's commits still wake its live readers."""
    reader = event_store.read(after_position=0, poll_interval=60)
    first = asyncio.ensure_future(anext(reader))
    await asyncio.sleep(0.2)  # the reader found nothing and waits (up to its 60 s poll)
    event = tick(1)
    await event_bus.publish(event, wait_for_handlers=True)
    got = await asyncio.wait_for(first, timeout=5)
    assert got.event_id == event.event_id and got.position is not None
    await reader.aclose()
