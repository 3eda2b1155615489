"""Reads of the event store (synchronous; async code calls them through a worker thread)."""

from typing import Any

from .models import StoredEvent

STORED_EVENT_FIELDS = (
    "position",
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
    "actor",
)


def stored_events_after(*, after: int | None, limit: int, **filters: str) -> list[dict[str, Any]]:
    """Up to `limit` stored events with a position above `after`, matching `filters`, in position order."""
    queryset = StoredEvent.objects.filter(**filters)
    if after is not None:
        queryset = queryset.filter(position__gt=after)
    return list(queryset.order_by("position").values(*STORED_EVENT_FIELDS)[:limit])
