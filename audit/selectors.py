"""Reads of the audit trail."""

from collections.abc import Mapping
from typing import Any

import django_filters
from django.db.models import QuerySet

from events.base import format_timestamp
from events.filters import MAX_ID_LENGTH, StoredEventFilter

from .models import AuditEntry

# The columns audit_entry_as_dict reads.
AUDIT_ENTRY_FIELDS = (
    "id",
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
    "hash",
)


class AuditEntryFilter(StoredEventFilter):
    """The events' filters on the audit trail (`after` is the event's position, so it leaves out purge
    checkpoints, which have none), plus who acted."""

    actor = django_filters.CharFilter(
        max_length=MAX_ID_LENGTH, help_text="Entries whose actor (the authenticated user) is this username."
    )

    class Meta:
        model = AuditEntry
        fields: list[str] = []


def audit_entry_as_dict(entry: Mapping[str, Any]) -> dict[str, Any]:
    """An entry as JSON: the event's fields, its position, who acted, and its place in the chain."""
    return {
        "entry_id": entry["id"],
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
        "hash": entry["hash"],
    }


def audit_entries(
    *, session_id: str | None = None, event_type: str | None = None, limit: int | None = 100
) -> list[dict[str, Any]]:
    """The newest audit entries first, filtered by session and event type."""
    entries = AuditEntry.objects.all()
    if session_id is not None:
        entries = entries.filter(session_id=session_id)
    if event_type is not None:
        entries = entries.filter(event_type=str(event_type))
    queryset = entries.order_by("-id").values(*AUDIT_ENTRY_FIELDS)
    rows = queryset if limit is None else queryset[:limit]
    return [audit_entry_as_dict(row) for row in rows]


def audit_entry_rows() -> QuerySet[AuditEntry, dict[str, Any]]:
    """Every audit entry as `.values()` rows for audit_entry_as_dict (filter and order it further)."""
    return AuditEntry.objects.values(*AUDIT_ENTRY_FIELDS)
