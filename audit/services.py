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
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.backends.utils import CursorWrapper

from events.base import BaseEvent, format_timestamp
from events.bulk import bulk_insert, datetime_adapter, text_encoder
from events.event_types import EventType
from events.models import PurgePermit, StoredEvent

from . import signing
from .models import GENESIS_HASH, AuditEntry, ChainHead, KeyRotation, MetricCounter
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
        EventType.TOOL_APPROVAL_CANCELLED,
        EventType.OPERATOR_SIGNED_IN,
        EventType.OPERATOR_SIGNED_OUT,
        EventType.OPERATOR_SIGN_IN_FAILED,
        EventType.OPERATOR_LOCKED_OUT,
        # Approval policies (hitl.policies): rule changes, partial approvals, escalations.
        "hitl_rule_changed",
        "hitl_approval_recorded",
        "hitl_standing_approval_changed",
        "tool_approval_escalated",
    }
)
HITL_DECISIONS = ("APPROVE", "EDIT", "REJECT")
PURGE_CHUNK = 10_000
# EU AI Act article 19: automatically generated logs kept at least six months.
DEFAULT_RETENTION_DAYS = 183


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


# json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False), its
# encoder built once (the store's batch hook hashes every audited event: 3.5 against 1.6 us each).
_canonical_text = text_encoder(sort_keys=True, separators=(",", ":"), allow_nan=False)


def canonical_json(value: Any) -> str:
    """One text for one value: sorted keys, no spaces, UTF-8 kept, whole numbers as integers."""
    return _canonical_text(_normalise_numbers(value))


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
    writers' lock. `previous` starts a new chain from that hash instead of the last entry's.

    Also moves the chain-head row on (the new last entry, the count grown by as many) and, once the
    transaction commits, has the new head signed and witnessed (audit.signing.entries_committed)."""
    if previous is None:
        previous = _last_hash(cursor)
    postgres = connection.vendor == "postgresql"
    adapt_datetime = datetime_adapter()
    head = [previous]  # the chain's last hash, as far as the rows have been built

    def rows() -> Iterator[tuple[Any, ...]]:
        # A generator, for COPY to stream (events.bulk.bulk_insert): hashed as they are sent.
        previous = head[0]
        for entry in entries:
            digest = chain_hash(previous, entry)
            event_id = entry["event_id"]
            if event_id is not None and not postgres:
                event_id = uuid.UUID(str(event_id)).hex
            yield (
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
            previous = head[0] = digest

    appended = bulk_insert(cursor, "audit_auditentry", _ENTRY_COLUMNS, rows())
    if not appended:
        return
    last_id, count = _advance_head(cursor, head[0], appended)
    transaction.on_commit(partial(signing.entries_committed, last_id, head[0], count))


def _advance_head(cursor: CursorWrapper, last_hash: str, appended: int) -> tuple[int, int]:
    """Point the chain-head row at the entry just appended with `last_hash`: (its id, the chain's count)."""
    cursor.execute(
        "UPDATE audit_chainhead SET entry_id = (SELECT id FROM audit_auditentry WHERE hash = %s), "
        "hash = %s, count = count + %s WHERE id = 1 RETURNING entry_id, count",
        [last_hash, last_hash, appended],
    )
    row = cursor.fetchone()
    if row is not None:
        return int(row[0]), int(row[1])
    # The first append since the table came (or a database restored without it): count once.
    cursor.execute("SELECT id FROM audit_auditentry WHERE hash = %s", [last_hash])
    last_id = int(cursor.fetchone()[0])
    count = _ordinal(last_id)
    cursor.execute(
        "INSERT INTO audit_chainhead (id, entry_id, hash, count) VALUES (1, %s, %s, %s)",
        [last_id, last_hash, count],
    )
    return last_id, count


def purged_total(checkpoints: list[dict[str, Any]]) -> int:
    """How many entries purges removed from the chain, from the checkpoints' data (oldest first): the
    newest checkpoint's running total, or (for checkpoints written before it) the sum of their counts."""
    for data in reversed(checkpoints):
        if isinstance(data.get("purged_total"), int):
            return int(data["purged_total"])
    return sum(int(data.get("audit_entries_deleted") or 0) for data in checkpoints)


def _checkpoint_data() -> list[dict[str, Any]]:
    return list(
        AuditEntry.objects.filter(kind=AuditEntry.Kind.CHECKPOINT)
        .order_by("id")
        .values_list("data", flat=True)
    )


def _ordinal(entry_id: int) -> int:
    """The chain's count at entry `entry_id`: the entries up to it, purged ones included."""
    return AuditEntry.objects.filter(id__lte=entry_id).count() + purged_total(_checkpoint_data())


def chain_count_at(entry_id: int) -> int:
    """The `count` of a head at `entry_id` (an export's last row)."""
    return _ordinal(entry_id)


def current_head() -> dict[str, Any]:
    """The chain's head, signed (the `GET /api/audit/head/` answer).

    This process's latest signed head when it is still the newest entry; otherwise (nothing signed yet
    here, or another process appended since) the head read from the database, signed now and witnessed.
    """
    last = AuditEntry.objects.order_by("-id").values("id", "hash").first()
    if last is None:
        return signing.make_head(None, GENESIS_HASH, purged_total(_checkpoint_data()))
    latest = signing.publisher.latest()
    key = signing.signing_key()
    if (
        latest is not None
        and latest["entry_id"] == last["id"]
        and latest["hash"] == last["hash"]
        and latest["key_id"] == (key.key_id if key else None)
    ):
        return latest
    row = ChainHead.objects.filter(id=1).values("entry_id", "hash", "count").first()
    if row is not None and row["entry_id"] == last["id"] and row["hash"] == last["hash"]:
        count = int(row["count"])
    else:
        count = chain_count_at(last["id"])
    head = signing.make_head(last["id"], last["hash"], count, key)
    signing.publisher.publish(head)
    return head


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


# The event types the counters count, and for tools the field each one adds to: one dict look-up per
# event in the store's batch hook (most events of a busy store count nothing).
_TOOL_FIELDS: dict[str, str] = {
    EventType.TOOL_EXECUTION_REQUESTED: "requested",
    EventType.TOOL_EXECUTION_COMPLETED: "completed",
    EventType.TOOL_EXECUTION_FAILED: "failed",
}
_COUNTED = frozenset(
    {
        EventType.AGENT_SWITCHED,
        EventType.AGENT_PROCESSING_COMPLETED,
        EventType.HITL_DECISION_MADE,
        *_TOOL_FIELDS,
    }
)


def _metric_deltas(events: list[BaseEvent]) -> Counter[tuple[str, str, str]]:
    deltas: Counter[tuple[str, str, str]] = Counter()
    tool_fields = _TOOL_FIELDS
    for event in events:
        kind = event.event_type
        if kind not in _COUNTED:
            continue
        data = event.data
        tool_field = tool_fields.get(kind)
        if tool_field is not None:
            deltas["tool_executions", str(data.get("tool_name")), tool_field] += 1
        elif kind == EventType.AGENT_SWITCHED:
            deltas["agent_switches", f"{data.get('from_agent')}_to_{data.get('to_agent')}", "count"] += 1
        elif kind == EventType.AGENT_PROCESSING_COMPLETED:
            agent = str(data.get("agent_type"))
            deltas["agent_processing", agent, "count"] += 1
            duration = data.get("duration_ms")
            if isinstance(duration, int | float) and not isinstance(duration, bool):
                deltas["agent_processing", agent, "total_duration_ms"] += duration  # type: ignore[assignment]
            succeeded = data.get("success", True)
            deltas["agent_processing", agent, "success_count" if succeeded else "failure_count"] += 1
        else:  # EventType.HITL_DECISION_MADE
            deltas["hitl_decisions", str(data.get("tool_name")), str(data.get("decision"))] += 1
    return deltas


def metrics_record_events(cursor: CursorWrapper, events: list[BaseEvent]) -> None:
    """Batch hook of the event store: add the batch's contribution to the metric counters."""

    deltas = _metric_deltas(events)
    if not deltas:
        return
    deltas = bound_metric_keys(cursor, deltas)
    table = MetricCounter._meta.db_table
    cursor.executemany(
        f"INSERT INTO {table} (metric, key, field, value) VALUES (%s, %s, %s, %s) "
        f"ON CONFLICT (metric, key, field) DO UPDATE SET value = {table}.value + excluded.value",
        [(metric, key[:255], field[:64], float(value)) for (metric, key, field), value in deltas.items()],
    )


# Verification


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of walking the chain: ok, how many entries, and the first broken one.

    `heads` counts the witnessed heads checked, `signatures` whether signatures were checked (a public
    key was known), `head` the newest witnessed head found in the chain."""

    ok: bool
    entries: int
    broken_entry: int | None = None
    reason: str | None = None
    heads: int = 0
    signatures: bool = False
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {"ok": self.ok, "entries": self.entries}
        if self.heads:
            result["witnessed_heads"] = self.heads
        if self.signatures:
            result["signatures_checked"] = True
        if not self.ok:
            result["broken_entry"] = self.broken_entry
            result["reason"] = self.reason
        if self.warnings:
            result["warnings"] = list(self.warnings)
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


@dataclass
class _Witnessed:
    hash: str
    count: int
    where: str
    seen: bool = False


class WitnessError(AuditError):
    """A witness file that cannot be read, or a head in it that is not validly signed."""


def _configured_public_keys() -> list[Any]:
    key = signing.signing_key()
    return [key.public] if key else []


def _load_witnesses(
    paths: Iterable[str],
) -> tuple[dict[int, list[_Witnessed]], list[dict[str, Any]], int]:
    """Heads by entry id, the rotation records, and how many heads."""
    heads: dict[int, list[_Witnessed]] = {}
    rotations: list[dict[str, Any]] = []
    total = 0
    for path in paths:
        try:
            for number, value in signing.read_witness(path):
                if "key_rotation" in value:
                    rotations.append(value["key_rotation"])
                    continue
                head = value.get("signed_head", value)
                if not isinstance(head, dict) or "hash" not in head or "count" not in head:
                    raise WitnessError(f"{path} line {number}: neither a signed head nor a key rotation")
                total += 1
                if head.get("entry_id") is None:
                    continue
                heads.setdefault(int(head["entry_id"]), []).append(
                    _Witnessed(str(head["hash"]), int(head["count"]), f"{path} line {number}")
                )
        except OSError as error:
            raise WitnessError(f"cannot read the witness file {path}: {error}") from None
        except (signing.SigningError, ValueError, TypeError) as error:
            raise WitnessError(str(error)) from None
    return heads, rotations, total


def _check_witness_signatures(paths: Iterable[str], keys: dict[str, Any]) -> None:
    for path in paths:
        for number, value in signing.read_witness(path):
            if "key_rotation" in value:
                continue
            head = value.get("signed_head", value)
            if not signing.head_valid(head, keys):
                raise WitnessError(
                    f"{path} line {number}: the head of entry {head.get('entry_id')} is not signed by a "
                    "trusted key"
                )


def audit_verify(
    progress: Callable[[int], None] | None = None,
    *,
    witness: Iterable[str] | None = None,
    public_keys: Iterable[Any] | None = None,
) -> VerifyResult:
    """Walk the chain and recompute every hash; report the first entry that does not hold.

    `witness`: files of signed heads (AUDIT_WITNESS_FILE when None): each head must still be in the
    chain (an entry with its id and hash, at its count), unless a purge removed it. `public_keys`
    (the configured signing key's when None): then every witnessed head, and every purge checkpoint,
    must carry a valid signature of one of them or of a key a valid rotation links to them.
    """
    paths = [
        str(path) for path in (witness if witness is not None else filter(None, [signing.witness_path()]))
    ]
    keys_given = list(public_keys) if public_keys is not None else _configured_public_keys()
    try:
        heads, rotations, head_count = _load_witnesses(paths)
        keys: dict[str, Any] | None = None
        if keys_given:
            stored = list(KeyRotation.objects.order_by("id").values_list("record", flat=True))
            keys = signing.trusted_keys(keys_given, [*stored, *rotations])
            _check_witness_signatures(paths, keys)
    except WitnessError as error:
        return VerifyResult(False, 0, None, str(error), signatures=bool(keys_given))
    result = _walk(heads, keys, progress)
    return VerifyResult(
        result.ok,
        result.entries,
        result.broken_entry,
        result.reason,
        heads=head_count,
        signatures=keys is not None,
        warnings=result.warnings,
    )


def _walk(
    heads: dict[int, list[_Witnessed]], keys: dict[str, Any] | None, progress: Callable[[int], None] | None
) -> VerifyResult:
    checkpoints = list(
        AuditEntry.objects.filter(kind=AuditEntry.Kind.CHECKPOINT).order_by("id").values_list("id", "data")
    )
    anchors = {(data.get("first_kept_id"), data.get("anchor_hash")) for _id, data in checkpoints}
    purged = purged_total([data for _id, data in checkpoints])
    permits = PurgePermit.objects.count()
    if permits:
        return VerifyResult(
            False,
            0,
            None,
            f"{permits} purge permit(s) committed in the database: the append-only triggers are open "
            "(a real purge never commits its permit)",
        )
    previous: str | None = None
    first_id: int | None = None
    count = 0
    for entry in _entries_in_order():
        count += 1
        if previous is None:
            first_id = entry["id"]
            expected_ok = entry["prev_hash"] == GENESIS_HASH or (entry["id"], entry["prev_hash"]) in anchors
            if not expected_ok:
                return VerifyResult(False, count, entry["id"], "the first entry links to nothing known")
        elif entry["prev_hash"] != previous:
            return VerifyResult(False, count, entry["id"], "prev_hash is not the previous entry's hash")
        if chain_hash(entry["prev_hash"], entry) != entry["hash"]:
            return VerifyResult(False, count, entry["id"], "the entry's content does not match its hash")
        if keys is not None and entry["kind"] == AuditEntry.Kind.CHECKPOINT:
            if not signing.purge_valid(entry["data"], keys):
                return VerifyResult(
                    False, count, entry["id"], "a purge checkpoint without a valid signature of a trusted key"
                )
        for witnessed in heads.get(entry["id"], ()):
            witnessed.seen = True
            if witnessed.hash != entry["hash"]:
                return VerifyResult(
                    False,
                    count,
                    entry["id"],
                    f"the entry no longer has the hash witnessed at {witnessed.where}: it was rewritten",
                )
            if witnessed.count != purged + count:
                return VerifyResult(
                    False,
                    count,
                    entry["id"],
                    f"the chain has {purged + count} entries up to it, the head witnessed at "
                    f"{witnessed.where} {witnessed.count}: entries before it were deleted or added",
                )
        previous = entry["hash"]
        if progress is not None and count % 10_000 == 0:
            progress(count)
    missing = [
        (entry_id, witnessed)
        for entry_id, group in heads.items()
        for witnessed in group
        if not witnessed.seen
        and not (first_id is not None and entry_id < first_id and witnessed.count <= purged)
        and not (first_id is None and witnessed.count <= purged)
    ]
    if missing:
        entry_id, witnessed = min(missing, key=lambda item: item[0])
        return VerifyResult(
            False,
            count,
            entry_id,
            f"the head witnessed at {witnessed.where} (entry {entry_id}, {witnessed.count} entries) is no "
            "longer in the chain: the newest entries were deleted or rewritten",
        )
    return VerifyResult(True, count)


# Purge


@dataclass(frozen=True)
class PurgeResult:
    events: int
    audit_entries: int
    dry_run: bool


def retention_days() -> float:
    from django.conf import settings

    return float(getattr(settings, "AUDIT_RETENTION_DAYS", DEFAULT_RETENTION_DAYS))


def retention_cutoff(now: datetime | None = None) -> datetime:
    """The oldest moment the retention keeps: what is older may be purged."""
    return (now or datetime.now(UTC)) - timedelta(days=retention_days())


def _lock_writers() -> None:
    """Take the event store's writers' lock (the position counter row) until this transaction ends."""
    with connection.cursor() as cursor:
        cursor.execute("UPDATE events_positioncounter SET value = value WHERE id = 1")


def _permit(reason: str, purge: dict[str, Any]) -> tuple[PurgePermit, dict[str, Any]]:
    """Open the append-only triggers for this transaction with a signed permit: (the row, its record)."""
    record = signing.sign_purge(reason[:255], purge)
    permit = PurgePermit.objects.create(reason=record["reason"], signature=record["signature"] or "")
    return permit, record


def events_purge(
    *,
    before: datetime,
    category: str | None = None,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
    scheduled: bool = False,
) -> PurgeResult:
    """Delete stored events older than `before` (of one category, if given) through the sanctioned path.

    Without a category, the audit entries older than `before` that begin the chain go too. A checkpoint
    entry records what went and the hash the remaining chain starts from, so verification still holds;
    it is written even when nothing went (each run is on record). `before` may not be inside the
    retention (AUDIT_RETENTION_DAYS). With a signing key, each permit is signed, and the checkpoint
    carries the signed permit of its transaction over everything it records.
    """
    if before.tzinfo is None:
        raise AuditError("before must be a timezone-aware date-time")
    now = datetime.now(UTC)
    if before > now:
        raise AuditError("before is in the future; purging would delete events that have not happened")
    cutoff = retention_cutoff(now)
    if before > cutoff:
        raise AuditError(
            f"before {format_timestamp(before)} is inside the retention: AUDIT_RETENTION_DAYS="
            f"{retention_days():g} keeps everything after {format_timestamp(cutoff)}"
        )
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
            permit, _record = _permit(
                f"purge before {format_timestamp(before)}",
                {
                    "before": format_timestamp(before),
                    "category": category,
                    "positions": [positions[0], positions[-1]],
                    "events": len(positions),
                },
            )
            StoredEvent.objects.filter(position__in=positions).delete()
            permit.delete()
        deleted_events += len(positions)
        if progress is not None:
            progress(deleted_events)

    with transaction.atomic():
        _lock_writers()
        # Read again under the lock: the chain may have grown since.
        checkpoints = _checkpoint_data()
        data: dict[str, Any] = {
            "before": format_timestamp(before),
            "category": category,
            "events_deleted": deleted_events,
            "audit_entries_deleted": 0,
        }
        if scheduled:
            data["scheduled"] = True
            data["retention_days"] = retention_days()
        restart_from: str | None = None
        doomed = AuditEntry.objects.none()
        if not category:
            last = AuditEntry.objects.order_by("-id").values("id", "hash").first()
            kept = (
                AuditEntry.objects.filter(timestamp__gte=before)
                .order_by("id")
                .values("id", "prev_hash")
                .first()
            )
            doomed = AuditEntry.objects.filter(id__lt=kept["id"]) if kept else AuditEntry.objects.all()
            expected = doomed.count()
            data["audit_entries_deleted"] = expected
            if expected and kept is not None:
                data["first_kept_id"] = kept["id"]
                data["anchor_hash"] = kept["prev_hash"]
            elif expected and last is not None:
                # Everything goes: the checkpoint itself starts a new chain, recording the hash it ended on.
                data["anchor_hash"] = last["hash"]
                restart_from = GENESIS_HASH
        data["purged_total"] = purged_total(checkpoints) + data["audit_entries_deleted"]
        permit, record = _permit(f"audit purge before {format_timestamp(before)}", dict(data))
        deleted_audit = 0
        if data["audit_entries_deleted"]:
            deleted_audit, _ = doomed.delete()
            if deleted_audit != data["audit_entries_deleted"]:
                raise AuditError("the audit trail changed under the writers' lock; nothing was purged")
        permit.delete()
        data["permit"] = record
        checkpoint: dict[str, Any] = {
            "kind": AuditEntry.Kind.CHECKPOINT,
            "position": None,
            "event_id": None,
            "event_type": str(EventType.AUDIT_PURGED),
            "event_category": "system",
            "timestamp": datetime.now(UTC),
            "session_id": None,
            "correlation_id": None,
            "actor": None,
            "data": data,
            "source": "purge_events",
        }
        with connection.cursor() as cursor:
            _append(cursor, [checkpoint], previous=restart_from)
    logger.info("purged %d events and %d audit entries before %s", deleted_events, deleted_audit, before)
    return PurgeResult(deleted_events, deleted_audit, False)


# Metric keys

OTHER = "other"  # where counts of keys beyond the limit go


def bound_metric_keys(
    cursor: Any, deltas: Mapping[tuple[str, str, str], float], limit: int | None = None
) -> Counter[tuple[str, str, str]]:
    """The batch's counter deltas with each metric kept to `limit` distinct keys (tools, agents;
    settings.EVENT_STATS_MAX_TYPES): a key the table does not hold yet, once the metric is full, counts
    under "other" instead, so made-up names cannot grow the metric counters without bound.

    Runs in the store's batch transaction, under the writers' lock: one query per metric in the batch,
    two when it brings new keys.
    """
    limit = limit if limit is not None else int(getattr(settings, "EVENT_STATS_MAX_TYPES", 1000))
    table = MetricCounter._meta.db_table
    by_metric: dict[str, set[str]] = {}
    for metric, key, _ in deltas:
        by_metric.setdefault(metric, set()).add(key[:255])
    admitted: dict[str, set[str]] = {}
    for metric, keys in by_metric.items():
        wanted = sorted(keys | {OTHER})
        placeholders = ", ".join(["%s"] * len(wanted))
        cursor.execute(
            f"SELECT DISTINCT key FROM {table} WHERE metric = %s AND key IN ({placeholders})",
            [metric, *wanted],
        )
        existing = {row[0] for row in cursor.fetchall()}
        new = [key for key in wanted if key not in existing and key != OTHER]
        if not new:
            admitted[metric] = existing
            continue
        cursor.execute(f"SELECT COUNT(DISTINCT key) FROM {table} WHERE metric = %s", [metric])
        held = int(cursor.fetchone()[0])
        # One place is kept for "other" itself.
        room = max(0, limit - held - (0 if OTHER in existing else 1))
        admitted[metric] = existing | set(new[:room]) | {OTHER}
    bounded: Counter[tuple[str, str, str]] = Counter()
    for (metric, key, field_name), value in deltas.items():
        key = key[:255]
        bounded[metric, key if key in admitted[metric] else OTHER, field_name] += value  # type: ignore[assignment]
    return bounded
