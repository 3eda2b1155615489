"""Reads of the notify app, as plain dicts for the async worker."""

from __future__ import annotations

import json
from typing import Any

from events.models import StoredEvent, row_to_contract_dict

from .models import WebhookDelivery, WebhookEndpoint

_EVENT_FIELDS = (
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
)


def enabled_endpoint_ids() -> list[int]:
    """The ids of the endpoints the worker delivers to."""
    return list(WebhookEndpoint.objects.filter(enabled=True).values_list("pk", flat=True))


def webhook_page(*, endpoint_id: int, limit: int) -> dict[str, Any] | None:
    """The endpoint (None when gone or disabled) and its next undelivered rows in position order, each
    with the body to send: the contract's event JSON with `position`."""
    endpoint = WebhookEndpoint.objects.filter(pk=endpoint_id, enabled=True).values("url", "secret").first()
    if endpoint is None:
        return None
    rows: list[dict[str, Any]] = [
        dict(row)
        for row in WebhookDelivery.objects.filter(endpoint_id=endpoint_id, delivered_at__isnull=True)
        .order_by("position")
        .values("id", "position", "event_id", "attempts", "next_attempt_at", "first_failed_at")[:limit]
    ]
    stored = {
        row["position"]: row
        for row in StoredEvent.objects.filter(position__in=[r["position"] for r in rows]).values(
            *_EVENT_FIELDS
        )
    }
    for row in rows:
        event = stored.get(row["position"])
        row["body"] = (
            None
            if event is None
            else json.dumps(row_to_contract_dict(event), ensure_ascii=False, separators=(",", ":")).encode()
        )
    return {"url": endpoint["url"], "secret": endpoint["secret"], "items": rows}
