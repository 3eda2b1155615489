"""The store's writer: a batching subscriber of the bus that commits every event with its position.

Ordering. Every writer, in every process, takes the lock of the one PositionCounter row first, hands
out positions from it, inserts, and commits; the next writer gets the lock only after that commit. So
positions are strictly increasing in commit order across the whole store, and a reader that asks for
"everything after position P" never misses an event committed later with a smaller number. On SQLite
the single writer (BEGIN IMMEDIATE) gives the same guarantee.

Batching: group commit without a window. The store subscriber only hands each event to the writer; the
writer commits as soon as it is free, taking everything that arrived while its previous commit ran (up
to MAX_BATCH), so batches grow with the load by themselves and an idle writer commits a lone event at
once. A publisher that waits (`wait_for_handlers=True`, the API's 201) is answered the moment the
commit holding its event ends. One transaction per batch, one writer thread per process, idempotent on
`event_id`. (`flush_interval` > 0 brings back a window for fire-and-forget events; nothing uses it.)

The readers are events.store_reader; events.event_store puts the two together as `event_store`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import psycopg
from django.db import IntegrityError, InterfaceError, OperationalError, connection, transaction
from django.db.backends.utils import CursorWrapper

from .base import BaseEvent
from .bulk import bulk_insert, datetime_adapter, json_text
from .columns import EVENT_COLUMNS
from .event_bus import EventBus, _completions, event_bus, wait_also

logger = logging.getLogger("events")

STORE_PRIORITY = 1_000_000  # before every other handler
BATCH_SIZE = 1_000  # a batch this large is flushed at once
MAX_BATCH = 5_000  # with a backlog, one transaction takes up to this many
FLUSH_INTERVAL_S = 0.0  # no window: see the module's docstring
MAX_BUFFER = 50_000

BatchHook = Callable[[CursorWrapper, list[BaseEvent]], None]
# COPY runs on psycopg's own cursor, so its errors come unwrapped by Django.
_INTEGRITY_ERRORS = (IntegrityError, psycopg.IntegrityError)
# The database is away (or busy): the batch is kept and retried. Anything else is about the batch.
_RETRYABLE_ERRORS = (OperationalError, InterfaceError, psycopg.OperationalError, psycopg.InterfaceError)


class EventStoreError(Exception):
    """The store could not commit an event (the database is unreachable or refused it)."""


class EventRefused(EventStoreError):
    """The database refused the event itself: sending it again will not help (a 400, not a 503)."""


GROUP_WAIT_S = 2.0


class Positions(list[int]):
    """The positions of a written batch, and how many of its events were new (not stored before)."""

    def __init__(self, positions: list[int], new: int) -> None:
        super().__init__(positions)
        self.new = new


class StoreGroup:
    """Events that are stored in one transaction or not at all: the events of one request.

    The writer never splits a group across transactions, and when the database refuses one of its
    events, none of them is stored. A group whose events stop arriving (a middleware dropped some) is
    written as it is after GROUP_WAIT_S, so no publisher can hang on it.
    """

    __slots__ = ("size", "arrived", "started")

    def __init__(self, size: int) -> None:
        self.size = size
        self.arrived = 0
        self.started = time.monotonic()

    def complete(self) -> bool:
        return self.arrived >= self.size or time.monotonic() - self.started > GROUP_WAIT_S


def store_together(events: list[BaseEvent]) -> None:
    """Mark `events` (about to be published) to be stored all in one transaction or not at all."""
    if len(events) > 1:
        group = StoreGroup(len(events))
        for event in events:
            event.__dict__["_store_group"] = group


def _group_of(entry: tuple[BaseEvent, Any]) -> StoreGroup | None:
    return entry[0].__dict__.get("_store_group")


def _no_readers() -> None:
    pass


class StoreWriter:
    """Persists every event published on the bus, in batches, each with its position."""

    def __init__(
        self,
        *,
        batch_size: int = BATCH_SIZE,
        flush_interval: float = FLUSH_INTERVAL_S,
        max_buffer: int = MAX_BUFFER,
        wake_readers: Callable[[], None] = _no_readers,
    ) -> None:
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_buffer = max_buffer
        self._hooks: list[BatchHook] = []
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._writer_thread: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Called (from any thread) after each commit of this process: the readers look now.
        self._wake_readers = wake_readers
        self._commit_listeners: list[Callable[[int], Any]] = []
        self._reset_writer()
        self.reset_stats()

    # Wiring

    def subscribe(self, bus: EventBus = event_bus) -> None:
        """Subscribe the store's writer to every event of `bus`, before any other handler (once)."""
        bus.on_shutdown(self.shutdown)
        if any(sub.handler == self._on_event for sub in bus.subscriptions):
            return
        # Never timed out: its wait for room in a full buffer is what holds publishers back while the
        # database is slow, and abandoning it would lose the event.
        bus.subscribe(handler=self._on_event, priority=STORE_PRIORITY, timeout=math.inf)

    def add_commit_listener(self, listener: Callable[[int], Any]) -> None:
        """Call `listener(last_position)` on the writer's loop after each batch this process commits.

        The distributed bus uses it to tell other processes' readers that there is something to read.
        """
        if listener not in self._commit_listeners:
            self._commit_listeners.append(listener)

    def add_batch_hook(self, hook: BatchHook) -> None:
        """Call `hook(cursor, events)` inside each batch's transaction with the events it newly stored."""
        if hook not in self._hooks:
            self._hooks.append(hook)

    def reset_stats(self) -> None:
        """Set the writer's counters back to zero."""
        self._stored = 0
        self._duplicates = 0
        self._rejected = 0
        self._batches = 0
        self._failures = 0
        self._last_batch_ms = 0.0

    def get_stats(self) -> dict[str, Any]:
        """The writer's counters and its buffer."""
        return {
            "stored": self._stored,
            "duplicates": self._duplicates,
            "rejected": self._rejected,
            "batches": self._batches,
            "write_failures": self._failures,
            "buffered": len(self._buffer),
            "last_batch_ms": round(self._last_batch_ms, 3),
        }

    # The writer

    def _reset_writer(self) -> None:
        self._buffer: list[tuple[BaseEvent, asyncio.Future[int] | None]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._kick: asyncio.Event | None = None
        self._room: asyncio.Event | None = None
        self._urgent = False
        self._waited_in_buffer = 0
        self._writing = 0
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._unavailable: str | None = None

    def _ensure_writer(self) -> None:
        flusher = self._flusher
        loop = self._loop
        if (
            flusher is not None
            and loop is not None
            and self._writer_thread == threading.get_ident()
            and loop.is_running()  # one running loop per thread: this one
            and not flusher.done()
        ):
            return  # the common case: already running on this (the bus's) loop
        loop = asyncio.get_running_loop()
        self._writer_thread = threading.get_ident()
        if self._loop is not loop:
            if self._loop is not None and self._buffer:
                logger.error("event store: %d events of a stopped loop were never written", len(self._buffer))
            self._loop = loop
            self._reset_writer()
        if self._flusher is None or self._flusher.done():
            self._wake = asyncio.Event()
            self._kick = asyncio.Event()
            self._room = asyncio.Event()
            self._room.set()
            self._flusher = loop.create_task(self._run_flusher(), name="event-store-writer")

    async def _on_event(self, event: BaseEvent) -> None:
        if event.replayed or event.remote or event.__dict__.get("_stored_in_transaction"):
            # Stored already (a replay, or by a service in its own transaction), or by the process that
            # published it (a remote event).
            return
        self._ensure_writer()
        assert self._room is not None and self._wake is not None and self._kick is not None
        while len(self._buffer) >= self.max_buffer:
            # The database is slow or down: hold the bus (and so its publishers) rather than grow.
            self._room.clear()
            await self._room.wait()
        committed: asyncio.Future[int] | None = None
        if wait_also_available():
            committed = asyncio.get_running_loop().create_future()
            wait_also(committed)
            self._urgent = True
            self._waited_in_buffer += 1
        group = event.__dict__.get("_store_group")
        if group is not None:
            group.arrived += 1
        self._buffer.append((event, committed))
        self._wake.set()
        if self._urgent or len(self._buffer) >= self.batch_size:
            self._kick.set()
            if not self._writing and not self._urgent:
                # A publisher in a loop that never suspends (a burst published in process) would fill
                # the buffer before the writer starts, and the commits would follow the publishing
                # instead of running beside it: give the writer a turn to take this batch.
                await asyncio.sleep(0)

    async def _run_flusher(self) -> None:
        assert self._wake is not None and self._kick is not None and self._room is not None
        while True:
            if not self._buffer:
                self._wake_idle()
                self._wake.clear()
                await self._wake.wait()
                continue
            if self.flush_interval > 0 and not self._urgent and len(self._buffer) < self.batch_size:
                self._kick.clear()
                try:
                    await asyncio.wait_for(self._kick.wait(), self.flush_interval)
                except TimeoutError:
                    pass
            else:
                await asyncio.sleep(0)  # let a burst that is being handled add to this batch
            batch = self._take_batch()
            if not batch:
                # The first group has not fully arrived yet (its events are on their way from the bus).
                await asyncio.sleep(0.001)
                continue
            self._waited_in_buffer -= sum(1 for _, done in batch if done is not None)
            self._urgent = self._waited_in_buffer > 0
            self._writing = len(batch)
            if len(self._buffer) < self.max_buffer:
                self._room.set()
            try:
                await self._write(batch)
            finally:
                self._writing = 0

    def _take_batch(self) -> list[tuple[BaseEvent, asyncio.Future[int] | None]]:
        """Up to MAX_BATCH buffered events from the front, never part of a group (a group may exceed it)."""
        buffer = self._buffer
        end = 0
        while end < len(buffer):
            group = _group_of(buffer[end])
            if group is None:
                if end >= MAX_BATCH:
                    break
                end += 1
                continue
            if not group.complete() or (end >= MAX_BATCH):
                break
            # The whole group: its events are in the buffer in publish order, maybe with others between.
            members = [i for i in range(end, len(buffer)) if _group_of(buffer[i]) is group]
            if members[-1] != end + len(members) - 1:
                # Another publisher's events came between: move the group's events together.
                picked = [buffer[i] for i in members]
                rest = [entry for i, entry in enumerate(buffer) if i >= end and _group_of(entry) is not group]
                buffer[end:] = picked + rest
            end += len(members)
        batch = buffer[:end]
        del buffer[:end]
        return batch

    async def _write(self, batch: list[tuple[BaseEvent, asyncio.Future[int] | None]]) -> None:
        """Commit `batch`, retrying while the database is away; isolate events it refuses."""
        loop = asyncio.get_running_loop()
        delay = 0.1
        while True:
            started = time.perf_counter()
            try:
                positions = await loop.run_in_executor(
                    self._get_executor(), self._write_batch, [event for event, _ in batch]
                )
                new = getattr(positions, "new", len(positions))
            except _RETRYABLE_ERRORS as error:
                self._failures += 1
                logger.warning(
                    "event store could not write %d events (retrying in %.1fs): %s", len(batch), delay, error
                )
                # Everyone waiting hears now (a 503 to retry), not when the database is back; the events
                # stay buffered and are committed then, once (idempotent on event_id).
                self._unavailable = f"the event store is unavailable: {error}"
                for _, done in (*batch, *self._buffer):
                    if done is not None and not done.done():
                        done.set_exception(EventStoreError(self._unavailable))
                await asyncio.sleep(delay)
                # At most a second between tries: service is back within about a second of the database.
                delay = min(delay * 2, 1.0)
                continue
            except Exception as error:
                # Not the connection: something in this batch the database (or its driver) refuses.
                # Halve until the one event (or the one group: all or nothing) is found, store the rest,
                # and log it in full.
                units = _units(batch)
                if len(units) > 1:
                    middle = len(units) // 2
                    await self._write([entry for unit in units[:middle] for entry in unit])
                    await self._write([entry for unit in units[middle:] for entry in unit])
                    return
                self._rejected += len(batch)
                first = batch[0][0]
                logger.error(
                    "event store refused %s%s: %s; event: %s",
                    first.event_id,
                    f" and the {len(batch) - 1} other events of its request" if len(batch) > 1 else "",
                    error,
                    first.to_json(),
                )
                for event, done in batch:
                    if done is not None and not done.done():
                        done.set_exception(
                            EventRefused(f"the database refused event {event.event_id}: {error}")
                        )
                return
            self._unavailable = None
            self._batches += 1
            self._last_batch_ms = (time.perf_counter() - started) * 1000
            self._stored += new
            self._duplicates += len(batch) - new
            for (event, done), position in zip(batch, positions, strict=True):
                event.position = position
                if done is not None and not done.done():
                    done.set_result(position)
            self._wake_readers()
            if self._commit_listeners and positions:
                last = max(positions)
                for listener in list(self._commit_listeners):
                    try:
                        listener(last)
                    except Exception:
                        logger.exception("event store: commit listener %r failed", listener)
            return

    def _get_executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="event-store-writer")
            return self._executor

    def _write_batch(self, events: list[BaseEvent]) -> list[int]:
        """In the writer thread: one transaction that numbers, inserts and hooks the new events; their
        positions (a `Positions` list that also says how many were new)."""
        # The connection kept from an earlier batch may have broken meanwhile (the database restarted):
        # then one more try at once, on a fresh connection from the pool (which checks it), before the
        # publishers hear of a failure. Safe: a batch is idempotent on event_id.
        for fresh in (connection.connection is None, True):
            try:
                with transaction.atomic(), connection.cursor() as cursor:
                    positions, new = self._insert(cursor, events)
                    return Positions(positions, new)
            except _RETRYABLE_ERRORS:
                connection.close()  # the next attempt starts on a fresh connection
                if fresh:
                    raise
        raise AssertionError("unreachable: the second attempt returns or raises")

    def store_in_transaction(self, events: list[BaseEvent]) -> list[int]:
        """Store `events` inside the caller's transaction: they commit, or roll back, with it.

        For a change whose record must not come apart from it (an approval request's status, its event
        and its audit entry): call inside `transaction.atomic()`, then publish the events on commit;
        the store's subscriber knows them as stored and does not write them again. Takes the writers'
        lock until the caller commits, so positions stay in commit order.
        """
        if not transaction.get_connection().in_atomic_block:
            raise RuntimeError("store_in_transaction needs the caller's transaction (transaction.atomic)")
        with connection.cursor() as cursor:
            positions, new = self._insert(cursor, events)
        for event, position in zip(events, positions, strict=True):
            event.position = position
            event.__dict__["_stored_in_transaction"] = True
        transaction.on_commit(lambda: self._committed_elsewhere(positions, new, len(events)))
        return positions

    def _committed_elsewhere(self, positions: list[int], new: int, total: int) -> None:
        """After a caller's transaction with events in it committed: count them and wake the readers."""
        self._stored += new
        self._duplicates += total - new
        self._wake_readers()
        if self._commit_listeners and positions:
            last = max(positions)
            for listener in list(self._commit_listeners):
                try:
                    listener(last)
                except Exception:
                    logger.exception("event store: commit listener %r failed", listener)

    def _insert(self, cursor: CursorWrapper, events: list[BaseEvent]) -> tuple[list[int], int]:
        """Number, insert and hook the new ones among `events`: their positions, and how many were new."""
        # The writers' lock: held from here until this transaction commits.
        cursor.execute("UPDATE events_positioncounter SET value = value WHERE id = 1")
        if cursor.rowcount == 0:
            cursor.execute(
                "INSERT INTO events_positioncounter (id, value) "
                # WHERE true: SQLite needs it to parse ON CONFLICT after a SELECT.
                "SELECT 1, COALESCE(MAX(position), 0) FROM events_storedevent WHERE true "
                "ON CONFLICT (id) DO NOTHING"
            )
            cursor.execute("UPDATE events_positioncounter SET value = value WHERE id = 1")

        unique: dict[str, BaseEvent] = {}
        for event in events:
            unique.setdefault(event.event_id, event)
        new = list(unique.values())
        try:
            # Optimistic: almost every batch is all new, so insert without looking first; a savepoint
            # undoes the numbering and the insert if one event_id was stored before.
            with transaction.atomic():
                assigned = self._number_and_insert(cursor, new)
        except _INTEGRITY_ERRORS:
            existing = self._existing_positions(cursor, list(unique))
            new = [event for event_id, event in unique.items() if event_id not in existing]
            assigned = dict(existing)
            if new:
                assigned.update(self._number_and_insert(cursor, new))
        if new:
            for event in new:
                event.position = assigned[event.event_id]
            for hook in self._hooks:
                hook(cursor, new)
        # Counted by the caller once the transaction has committed.
        return [assigned[event.event_id] for event in events], len(new)

    def _number_and_insert(self, cursor: CursorWrapper, events: list[BaseEvent]) -> dict[str, int]:
        cursor.execute(
            "UPDATE events_positioncounter SET value = value + %s WHERE id = 1 RETURNING value", [len(events)]
        )
        first = int(cursor.fetchone()[0]) - len(events) + 1
        assigned = {event.event_id: first + offset for offset, event in enumerate(events)}
        self._insert_rows(cursor, events, assigned)
        return assigned

    @staticmethod
    def _existing_positions(cursor: CursorWrapper, event_ids: list[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        postgres = connection.vendor == "postgresql"
        for start in range(0, len(event_ids), 500):
            chunk = event_ids[start : start + 500]
            values = [uuid.UUID(e) if postgres else uuid.UUID(e).hex for e in chunk]
            marks = ", ".join(["%s"] * len(values))
            cursor.execute(
                f"SELECT event_id, position FROM events_storedevent WHERE event_id IN ({marks})", values
            )
            for event_id, position in cursor.fetchall():
                found[str(uuid.UUID(str(event_id)))] = position
        return found

    @staticmethod
    def _insert_rows(cursor: CursorWrapper, events: list[BaseEvent], positions: dict[str, int]) -> None:
        dumps = json_text
        postgres = connection.vendor == "postgresql"
        adapt_datetime = datetime_adapter()
        stored_at = adapt_datetime(datetime.now(UTC))

        def rows() -> Iterator[tuple[Any, ...]]:
            # A generator: on PostgreSQL the COPY sends each chunk as it fills, so the server inserts
            # while the rest are encoded (measured: the rows took a tenth of a batch's time).
            for event in events:
                data_json = dumps(event.data)
                # Kept for the batch hooks (the audit trail stores the same text).
                event.__dict__["_data_json"] = data_json
                yield (
                    positions[event.event_id],
                    # BaseEvent keeps event_id as str(UUID): its hex is that text without hyphens.
                    event.event_id if postgres else event.event_id.replace("-", ""),
                    str(event.event_type),
                    str(event.event_category),
                    adapt_datetime(event.timestamp),
                    event.session_id,
                    event.correlation_id,
                    event.causation_id,
                    data_json,
                    event.source,
                    event.version,
                    event.actor,
                    stored_at,
                )

        bulk_insert(cursor, "events_storedevent", EVENT_COLUMNS, rows())

    def _wake_idle(self) -> None:
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event handed to the writer so far is committed; False on timeout."""
        loop = self._loop
        if loop is None or loop.is_closed() or (not self._buffer and not self._writing):
            return True
        if loop is not asyncio.get_running_loop():
            future = asyncio.run_coroutine_threadsafe(self.flush(timeout), loop)
            return await asyncio.wrap_future(future)
        assert self._kick is not None
        waiter: asyncio.Future[None] = loop.create_future()
        self._idle_waiters.append(waiter)
        self._urgent = True
        self._kick.set()
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            return False
        return True

    def flush_sync(self, timeout: float | None = None) -> bool:
        """flush() for synchronous code (not on the writer's loop)."""
        loop = self._loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return not self._buffer
        return asyncio.run_coroutine_threadsafe(self.flush(timeout), loop).result()

    async def shutdown(self, timeout: float | None = 30.0) -> bool:
        """Commit what is buffered, then stop the writer task and close its database connection."""
        flushed = await self.flush(timeout)
        if not flushed:
            logger.error("event store: %d events were not committed before shutdown", len(self._buffer))
        flusher = self._flusher
        if flusher is not None and not flusher.done() and flusher.get_loop() is asyncio.get_running_loop():
            flusher.cancel()
            try:
                await flusher
            except asyncio.CancelledError:
                pass
        self._flusher = None
        executor = self._executor
        if executor is not None:
            await asyncio.get_running_loop().run_in_executor(executor, _close_connection)
        return flushed

    def close_connection_sync(self) -> None:
        """Close the writer thread's database connection (from synchronous code, e.g. tests)."""
        executor = self._executor
        if executor is not None:
            executor.submit(_close_connection).result(timeout=10)


def _units(
    batch: list[tuple[BaseEvent, asyncio.Future[int] | None]],
) -> list[list[tuple[BaseEvent, asyncio.Future[int] | None]]]:
    """The batch in the pieces isolation may not split: single events, and whole groups."""
    units: list[list[tuple[BaseEvent, asyncio.Future[int] | None]]] = []
    by_group: dict[int, list[tuple[BaseEvent, asyncio.Future[int] | None]]] = {}
    for entry in batch:
        group = _group_of(entry)
        if group is None:
            units.append([entry])
        elif id(group) in by_group:
            by_group[id(group)].append(entry)
        else:
            by_group[id(group)] = [entry]
            units.append(by_group[id(group)])
    return units


def _close_connection() -> None:
    # Called in the writer thread: `connection` resolves to that thread's connection only there.
    connection.close()


def wait_also_available() -> bool:
    """Whether the event being handled has a publisher waiting for its handlers."""
    return _completions.get() is not None
