"""Reads of the event store (synchronous; async code calls them through a worker thread)."""

import uuid
from typing import Any

from django.db.models import QuerySet
from django.db.models.fields.json import KT

from .columns import EVENT_COLUMNS
from .models import StoredEvent, row_to_contract_dict

# The stored columns an event is read back from: every column the store writes but its own timestamp.
STORED_EVENT_FIELDS = tuple(column for column in EVENT_COLUMNS if column != "stored_at")
# The columns of the contract's JSON of a stored event (events.models.row_to_contract_dict), in its order.
CONTRACT_FIELDS = (
    "event_id",
    "event_type",
    "event_category",
    "timestamp",
    "session_id",
    "correlation_id",
    "causation_id",
    "data",
    "source",
    "version",
    "position",
)


def stored_events_after(
    *, after: int | None, limit: int, up_to: int | None = None, **filters: str
) -> list[dict[str, Any]]:
    """Up to `limit` stored events with a position above `after` (and at most `up_to`), matching
    `filters`, in position order."""
    queryset = StoredEvent.objects.filter(**filters)
    if after is not None:
        queryset = queryset.filter(position__gt=after)
    if up_to is not None:
        queryset = queryset.filter(position__lte=up_to)
    return list(queryset.order_by("position").values(*STORED_EVENT_FIELDS)[:limit])


def last_stored_position() -> int:
    """The highest position stored (0 when the store is empty)."""
    last = StoredEvent.objects.order_by("-position").values_list("position", flat=True).first()
    return last or 0


def stored_positions(*, event_ids: list[str]) -> dict[str, int]:
    """The positions of those of `event_ids` that are stored, by event id."""
    rows = StoredEvent.objects.filter(event_id__in=event_ids).values_list("event_id", "position")
    return {str(event_id): position for event_id, position in rows}


def stored_event_rows() -> QuerySet[StoredEvent, dict[str, Any]]:
    """Every stored event as `.values()` rows of the contract's columns (filter and order it further)."""
    return StoredEvent.objects.values(*CONTRACT_FIELDS)


def stored_event_get(*, event_id: str) -> dict[str, Any] | None:
    """The contract's JSON of the stored event `event_id`; None when there is none (or it is no UUID)."""
    try:
        key = uuid.UUID(event_id)
    except (ValueError, TypeError, AttributeError):
        return None
    row = stored_event_rows().filter(event_id=key).first()
    return None if row is None else row_to_contract_dict(row)


# Traces and timelines (events.traces builds them)

# Keys of `data` that say what a step of a trace did, in the order shown.
SUMMARY_KEYS = ("agent_type", "from_agent", "to_agent", "tool_name", "decision", "role", "username")

STEP_FIELDS = (
    "position",
    "event_id",
    "event_type",
    "event_category",
    "timestamp",
    "session_id",
    "correlation_id",
    "causation_id",
    "source",
    "actor",
)


def with_summary(queryset: QuerySet[StoredEvent]) -> QuerySet[Any]:
    """The fields of a step, and the few keys of `data` that say what it did (not all of `data`)."""
    keys = {f"data_{key}": KT(f"data__{key}") for key in SUMMARY_KEYS}
    return queryset.annotate(**keys).values(*STEP_FIELDS, *keys)
