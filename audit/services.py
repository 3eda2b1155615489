"""Writes of the audit app: the hash-chained trail, the metric counters, verification and purge.

`audit_record_events` and `metrics_record_events` run inside the event store's batch transaction,
under the writers' lock, so the chain has one order and the counters count each stored event once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.db import connection, transaction
from django.db.backends.utils import CursorWrapper

from events.base import BaseEvent, format_timestamp
from events.bulk import bulk_insert, datetime_adapter
from events.event_types import EventType
from events.models import PurgePermit, StoredEvent

from .models import GENESIS_HASH, AuditEntry, MetricCounter
from .selectors import AUDIT_ENTRY_FIELDS

logger = logging.getLogger("audit")

# The critical events of the design document, plus operators signing in and out.
AUDITED_EVENT_TYPES = frozenset(
    {
        EventType.AGENT_SWITCHED,
        EventType.HITL_DECISION_MADE,
        EventType.AGENT_ERROR_OCCURRED,
        EventType.TOOL_EXECUTION_FAILED,
        EventType.TOOL_APPROVAL_REQUIRED,
        EventType.OPERATOR_SIGNED_IN,
        EventType.OPERATOR_SIGNED_OUT,
        EventType.OPERATOR_SIGN_IN_FAILED,
    }
)
HITL_DECISIONS = ("APPROVE", "EDIT", "REJECT")
PURGE_CHUNK = 10_000


class AuditError(Exception):
    """A project error of the audit app (mapped to a 4xx by the API)."""


# The chain


def _normalise_numbers(value: Any) -> Any:
    # PostgreSQL's jsonb gives 1e16 back as 10000000000000000 and keeps 1.0 as 1.0: write whole floats
    # as integers so the text hashed is the same before and after the round trip through the database.
    if type(value) is float and value.is_integer():
        return int(value)
    if type(value) is dict:
        return {key: _normalise_numbers(item) for key, item in value.items()}
    if type(value) is list or type(value) is tuple:
        return [_normalise_numbers(item) for item in value]
    return value


def canonical_json(value: Any) -> str:
    """One text for one value: sorted keys, no spaces, UTF-8 kept, whole numbers as integers."""
    return json.dumps(
        _normalise_numbers(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def entry_content(entry: dict[str, Any]) -> dict[str, Any]:
    """What an entry's hash covers: everything but its id and its own hashes."""
    return {
        "kind": entry["kind"],
        "position": entry["position"],
        "event_id": None if entry["event_id"] is None else str(entry["event_id"]),
        "event_type": entry["event_type"],
        "event_category": entry["event_category"],
        "timestamp": format_timestamp(entry["timestamp"]),
        "session_id": entry["session_id"],
        "correlation_id": entry["correlation_id"],
        "actor": entry["actor"],
        "data": entry["data"],
        "source": entry["source"],
    }


def chain_hash(prev_hash: str, entry: dict[str, Any]) -> str:
    """The hash of an entry: SHA-256 of the previous entry's hash and the entry's canonical JSON."""
    payload = prev_hash + canonical_json(entry_content(entry))
    return hashlib.sha256(payload.encode()).hexdigest()


_ENTRY_COLUMNS = (
    "kind",
    "position",
    "event_id",
    "event_type",
    "event_category",
    "timestamp",
    "session_id",
    "correlation_id",
    "actor",
    "data",
    "source",
    "prev_hash",
    "hash",
)


def _last_hash(cursor: CursorWrapper) -> str:
    cursor.execute("SELECT hash FROM audit_auditentry ORDER BY id DESC LIMIT 1")
    row = cursor.fetchone()
    return row[0] if row else GENESIS_HASH


def _append(cursor: CursorWrapper, entries: list[dict[str, Any]], previous: str | None = None) -> None:
    """Chain and insert entries with raw SQL (this runs once per store batch); the caller holds the
    writers' lock. `previous` starts a new chain from that hash instead of the last entry's."""
    if previous is None:
        previous = _last_hash(cursor)
    postgres = connection.vendor == "postgresql"
    adapt_datetime = datetime_adapter()
    rows = []
    for entry in entries:
        digest = chain_hash(previous, entry)
        event_id = entry["event_id"]
        if event_id is not None and not postgres:
            event_id = uuid.UUID(str(event_id)).hex
        rows.append(
            (
                str(entry["kind"]),
                entry["position"],
                event_id,
                entry["event_type"],
                entry["event_category"],
                adapt_datetime(entry["timestamp"]),
                entry["session_id"],
                entry["correlation_id"],
                entry["actor"],
                entry.get("data_json") or json.dumps(entry["data"], ensure_ascii=False),
                entry["source"],
                previous,
                digest,
            )
        )
        previous = digest
    bulk_insert(cursor, "audit_auditentry", _ENTRY_COLUMNS, rows)


def audit_record_events(cursor: CursorWrapper, events: list[BaseEvent]) -> None:
    """Batch hook of the event store: append the critical events among `events` to the chain."""
    entries = [
        {
            "kind": AuditEntry.Kind.EVENT,
            "position": event.position,
            "event_id": event.event_id,
            "event_type": str(event.event_type),
            "event_category": str(event.event_category),
            "timestamp": event.timestamp,
            "session_id": event.session_id,
            "correlation_id": event.correlation_id,
            "actor": event.actor,
            "data": event.data,
            "data_json": event.__dict__.get("_data_json"),
            "source": event.source,
        }
        for event in events
        if event.event_type in AUDITED_EVENT_TYPES
    ]
    if entries:
        _append(cursor, entries)


# Metrics


def _metric_deltas(events: list[BaseEvent]) -> Counter[tuple[str, str, str]]:
    deltas: Counter[tuple[str, str, str]] = Counter()
    for event in events:
        data = event.data
        kind = event.event_type
        if kind == EventType.AGENT_SWITCHED:
            deltas["agent_switches", f"{data.get('from_agent')}_to_{data.get('to_agent')}", "count"] += 1
        elif kind == EventType.AGENT_PROCESSING_COMPLETED:
            agent = str(data.get("agent_type"))
            deltas["agent_processing", agent, "count"] += 1
            duration = data.get("duration_ms")
            if isinstance(duration, int | float) and not isinstance(duration, bool):
                deltas["agent_processing", agent, "total_duration_ms"] += duration  # type: ignore[assignment]
            succeeded = data.get("success", True)
            deltas["agent_processing", agent, "success_count" if succeeded else "failure_count"] += 1
        elif kind in (
            EventType.TOOL_EXECUTION_REQUESTED,
            EventType.TOOL_EXECUTION_COMPLETED,
            EventType.TOOL_EXECUTION_FAILED,
        ):
            field = {
                EventType.TOOL_EXECUTION_REQUESTED: "requested",
                EventType.TOOL_EXECUTION_COMPLETED: "completed",
                EventType.TOOL_EXECUTION_FAILED: "failed",
            }[EventType(kind)]
            deltas["tool_executions", str(data.get("tool_name")), field] += 1
        elif kind == EventType.HITL_DECISION_MADE:
            deltas["hitl_decisions", str(data.get("tool_name")), str(data.get("decision"))] += 1
    return deltas


def metrics_record_events(cursor: CursorWrapper, events: list[BaseEvent]) -> None:
    """Batch hook of the event store: add the batch's contribution to the metric counters."""
    deltas = _metric_deltas(events)
    if not deltas:
        return
    table = MetricCounter._meta.db_table
    cursor.executemany(
        f"INSERT INTO {table} (metric, key, field, value) VALUES (%s, %s, %s, %s) "
        f"ON CONFLICT (metric, key, field) DO UPDATE SET value = {table}.value + excluded.value",
        [(metric, key[:255], field[:64], float(value)) for (metric, key, field), value in deltas.items()],
    )


# Verification


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of walking the chain: ok, how many entries, and the first broken one."""

    ok: bool
    entries: int
    broken_entry: int | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {"ok": self.ok, "entries": self.entries}
        if not self.ok:
            result["broken_entry"] = self.broken_entry
            result["reason"] = self.reason
        return result


# What verification reads: what the trail shows, and the link to the previous entry.
_ENTRY_FIELDS = (*AUDIT_ENTRY_FIELDS, "prev_hash")


def _entries_in_order(chunk: int = 2_000) -> Iterator[dict[str, Any]]:
    """Every entry by id, read in keyset pages so memory stays flat on a long trail."""
    last_id = 0
    while True:
        page = list(AuditEntry.objects.filter(id__gt=last_id).order_by("id").values(*_ENTRY_FIELDS)[:chunk])
        if not page:
            return
        yield from page
        last_id = page[-1]["id"]


def audit_verify(progress: Callable[[int], None] | None = None) -> VerifyResult:
    """Walk the chain and recompute every hash; report the first entry that does not hold."""
    anchors = {
        (data.get("first_kept_id"), data.get("anchor_hash"))
        for data in AuditEntry.objects.filter(kind=AuditEntry.Kind.CHECKPOINT).values_list("data", flat=True)
    }
    previous: str | None = None
    count = 0
    for entry in _entries_in_order():
        count += 1
        if previous is None:
            expected_ok = entry["prev_hash"] == GENESIS_HASH or (entry["id"], entry["prev_hash"]) in anchors
            if not expected_ok:
                return VerifyResult(False, count, entry["id"], "the first entry links to nothing known")
        elif entry["prev_hash"] != previous:
            return VerifyResult(False, count, entry["id"], "prev_hash is not the previous entry's hash")
        if chain_hash(entry["prev_hash"], entry) != entry["hash"]:
            return VerifyResult(False, count, entry["id"], "the entry's content does not match its hash")
        previous = entry["hash"]
        if progress is not None and count % 10_000 == 0:
            progress(count)
    return VerifyResult(True, count)


# Purge


@dataclass(frozen=True)
class PurgeResult:
    events: int
    audit_entries: int
    dry_run: bool


def _lock_writers() -> None:
    """Take the event store's writers' lock (the position counter row) until this transaction ends."""
    with connection.cursor() as cursor:
        cursor.execute("UPDATE events_positioncounter SET value = value WHERE id = 1")


def events_purge(
    *,
    before: datetime,
    category: str | None = None,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> PurgeResult:
    """Delete stored events older than `before` (of one category, if given) through the sanctioned path.

    Without a category, the audit entries older than `before` that begin the chain go too. A checkpoint
    entry records what went and the hash the remaining chain starts from, so verification still holds.
    """
    if before.tzinfo is None:
        raise AuditError("before must be a timezone-aware date-time")
    if before > datetime.now(UTC):
        raise AuditError("before is in the future; purging would delete events that have not happened")
    events = StoredEvent.objects.filter(timestamp__lt=before)
    if category:
        events = events.filter(event_category=category)
    first_kept = (
        None
        if category
        else AuditEntry.objects.filter(timestamp__gte=before).order_by("id").values("id", "prev_hash").first()
    )
    if category:
        audit_doomed = AuditEntry.objects.none()
    elif first_kept is None:
        audit_doomed = AuditEntry.objects.all()
    else:
        audit_doomed = AuditEntry.objects.filter(id__lt=first_kept["id"])
    if dry_run:
        return PurgeResult(events.count(), audit_doomed.count(), True)

    deleted_events = 0
    while True:
        with transaction.atomic():
            positions = list(events.order_by("position").values_list("position", flat=True)[:PURGE_CHUNK])
            if not positions:
                break
            permit = PurgePermit.objects.create(reason=f"purge before {format_timestamp(before)}")
            StoredEvent.objects.filter(position__in=positions).delete()
            permit.delete()
        deleted_events += len(positions)
        if progress is not None:
            progress(deleted_events)

    with transaction.atomic():
        _lock_writers()
        # Read again under the lock: the chain may have grown since.
        if category:
            deleted_audit = 0
            anchor: Any = None
        else:
            last = AuditEntry.objects.order_by("-id").values("id", "hash").first()
            kept = (
                AuditEntry.objects.filter(timestamp__gte=before)
                .order_by("id")
                .values("id", "prev_hash")
                .first()
            )
            if kept is None and last is not None:
                # Everything goes: the checkpoint itself becomes the start, chained to the last hash.
                anchor = None
            else:
                anchor = kept
            doomed = AuditEntry.objects.filter(id__lt=kept["id"]) if kept else AuditEntry.objects.all()
            permit = PurgePermit.objects.create(reason=f"audit purge before {format_timestamp(before)}")
            deleted_audit, _ = doomed.delete()
            permit.delete()
        data: dict[str, Any] = {
            "before": format_timestamp(before),
            "category": category,
            "events_deleted": deleted_events,
            "audit_entries_deleted": deleted_audit,
        }
        if anchor is not None and deleted_audit:
            data["first_kept_id"] = anchor["id"]
            data["anchor_hash"] = anchor["prev_hash"]
        now = datetime.now(UTC)
        checkpoint: dict[str, Any] = {
            "kind": AuditEntry.Kind.CHECKPOINT,
            "position": None,
            "event_id": None,
            "event_type": str(EventType.AUDIT_PURGED),
            "event_category": "system",
            "timestamp": now,
            "session_id": None,
            "correlation_id": None,
            "actor": None,
            "data": data,
            "source": "purge_events",
        }
        with connection.cursor() as cursor:
            if anchor is None and deleted_audit:
                # The whole trail went: the checkpoint starts a new chain, recording the hash it ended on.
                checkpoint["data"]["anchor_hash"] = last["hash"] if last else GENESIS_HASH
                _append(cursor, [checkpoint], previous=GENESIS_HASH)
            else:
                _append(cursor, [checkpoint])
    logger.info("purged %d events and %d audit entries before %s", deleted_events, deleted_audit, before)
    return PurgeResult(deleted_events, deleted_audit, False)
