"""Reads for the operators' overview at `/`: each a few indexed queries, each returning plain dicts."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Max
from django.utils import timezone

from audit.services import current_head
from events.models import StoredEvent
from hitl.models import ApprovalRequest, ApprovalStatus

EXPIRING_WITHIN_S = 300


def approvals_overview(*, now: datetime) -> dict[str, Any]:
    """Pending requests, those expiring within 5 minutes, and today's decisions by channel."""
    pending = ApprovalRequest.objects.filter(status=ApprovalStatus.PENDING)  # index status+expires_at
    midnight = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)
    decided = (
        ApprovalRequest.objects.filter(decided_at__gte=midnight)
        .exclude(status=ApprovalStatus.PENDING)
        .values("channel")
        .annotate(count=Count("id"))
        .order_by("channel")
    )
    by_channel = {row["channel"] or "unknown": row["count"] for row in decided}
    return {
        "pending": pending.count(),
        "expiring_soon": pending.filter(expires_at__lte=now + timedelta(seconds=EXPIRING_WITHIN_S)).count(),
        "decided_today": sum(by_channel.values()),
        "decided_by_channel": by_channel,
    }


def events_overview(*, now: datetime) -> dict[str, Any]:
    """Events stored in the last hour, from positions: two index lookups, never a COUNT of the table."""
    latest = StoredEvent.objects.aggregate(last=Max("position"))["last"]
    first = (
        StoredEvent.objects.filter(timestamp__gte=now - timedelta(hours=1))
        .order_by("timestamp")
        .values_list("position", flat=True)
        .first()
    )
    # Positions are gap-free in commit order, so last - first + 1 is the count (an event whose
    # timestamp is older than its neighbours' may make it an estimate; the page says "about").
    last_hour = 0 if first is None or latest is None else int(latest) - int(first) + 1
    return {"last_hour": last_hour, "latest_position": latest}


def audit_overview() -> dict[str, Any]:
    """The chain's head (id, count, signed?): the cheap answer; verification is /api/audit/verify/."""
    head = current_head()
    return {
        "entries": head.get("count"),
        "head_entry": head.get("entry_id"),
        "signed": head.get("signature") is not None,
        "signed_at": head.get("signed_at"),
    }


def overview(*, now: datetime | None = None) -> dict[str, Any]:
    """Everything the overview shows, JSON-safe."""
    now = now or timezone.now()
    return {
        "approvals": approvals_overview(now=now),
        "events": events_overview(now=now),
        "audit": audit_overview(),
        "generated_at": now.isoformat().replace("+00:00", "Z"),
    }
