"""Writes of the notify app: webhook endpoints, queuing the outbox from the store, its outcomes,
redelivery, leases, preferences."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import F, Max, Q
from django.utils import timezone

from core.errors import ApplicationError
from events.bulk import bulk_insert, datetime_adapter
from events.models import StoredEvent

from .conf import notify_settings
from .models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WorkerLease, webhook_secret_generate
from .webhooks import DELIVERY_COLUMNS, check_event_types, check_secret, check_url, delivery_signal

logger = logging.getLogger("notify")


# Endpoints


def webhook_endpoint_check(*, url: str, event_types: Any, secret: str) -> list[str]:
    """Check an endpoint's fields (400 naming the field); the cleaned event types."""
    check_url(url)
    check_secret(secret)
    return check_event_types(event_types)


@transaction.atomic
def webhook_endpoint_save(
    *,
    endpoint: WebhookEndpoint | None = None,
    url: str,
    event_types: Any = (),
    secret: str | None = None,
    description: str = "",
    enabled: bool = True,
) -> WebhookEndpoint:
    """Create or change an endpoint after checking it; enabling it clears the reason it was disabled."""
    endpoint = endpoint or WebhookEndpoint()
    secret = secret or endpoint.secret or webhook_secret_generate()
    endpoint.event_types = webhook_endpoint_check(url=url, event_types=list(event_types), secret=secret)
    endpoint.url = url
    endpoint.secret = secret
    endpoint.description = description
    if endpoint.pk is None:
        # A new endpoint hears of what is stored from now on, not the store's history. One disabled and
        # enabled again resumes where it stopped: what was stored meanwhile follows, in order.
        endpoint.queued_position = _store_end()
    if enabled and not endpoint.enabled:
        endpoint.disabled_reason = ""
        # A fresh retry window for what was waiting.
        if endpoint.pk is not None:
            WebhookDelivery.objects.filter(endpoint=endpoint, delivered_at__isnull=True).update(
                first_failed_at=None, next_attempt_at=None
            )
    endpoint.enabled = enabled
    endpoint.save()
    return endpoint


def _store_end() -> int:
    return StoredEvent.objects.aggregate(m=Max("position"))["m"] or 0


def webhook_enqueue(*, endpoint_id: int, limit: int = 200, backlog: int = 1000) -> int:
    """Queue the stored events after the endpoint's `queued_position` that it takes, as outbox rows, in
    position order: about `limit` rows at a time, and nothing while `backlog` rows wait already (a dead
    receiver's backlog stays in the store, not here). Returns how many rows were queued.

    The store hands out positions in commit order (events.store_writer), so every position up to the
    store's end is committed and visible: moving `queued_position` there misses nothing. The endpoint's
    row is locked, so two processes never queue the same position twice. Nothing to queue costs two
    indexed reads and no transaction (on SQLite a transaction takes the one write lock).
    """
    endpoint = WebhookEndpoint.objects.filter(pk=endpoint_id, enabled=True).only("queued_position").first()
    if endpoint is None or _store_end() <= endpoint.queued_position:
        return 0
    waiting = WebhookDelivery.objects.filter(endpoint_id=endpoint_id, delivered_at__isnull=True)
    if waiting[backlog - 1 : backlog].exists():
        return 0
    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.select_for_update().filter(pk=endpoint_id, enabled=True).first()
        if endpoint is None:
            return 0
        end = _store_end()
        queued = endpoint.queued_position
        rows: list[tuple[Any, ...]] = []
        now = datetime_adapter()(timezone.now())
        # Windows of `limit` positions (an index range each) until a page's worth is found or the end.
        while queued < end and len(rows) < limit:
            upto = min(end, queued + limit)
            events = StoredEvent.objects.filter(position__gt=queued, position__lte=upto)
            if endpoint.event_types:
                events = events.filter(
                    Q(event_type__in=endpoint.event_types) | Q(event_category__in=endpoint.event_types)
                )
            rows.extend(
                (endpoint_id, position, str(event_id), event_type, now, 0, "")
                for position, event_id, event_type in events.order_by("position").values_list(
                    "position", "event_id", "event_type"
                )
            )
            queued = upto
        if queued == endpoint.queued_position:
            return 0
        with connection.cursor() as cursor:
            bulk_insert(cursor, WebhookDelivery._meta.db_table, DELIVERY_COLUMNS, rows)
        WebhookEndpoint.objects.filter(pk=endpoint_id).update(queued_position=queued)
    return len(rows)


@transaction.atomic
def webhook_endpoint_disable(*, endpoint_id: int, reason: str) -> None:
    """Stop delivering to an endpoint, saying why (shown in the admin)."""
    for endpoint in WebhookEndpoint.objects.filter(pk=endpoint_id, enabled=True):
        endpoint.enabled = False
        endpoint.disabled_reason = reason
        endpoint.save(update_fields=["enabled", "disabled_reason", "updated_at"])
        logger.warning("webhook endpoint %s (%s) disabled: %s", endpoint.pk, endpoint.url, reason)


@transaction.atomic
def webhook_redeliver(*, delivery_ids: list[int]) -> int:
    """Send deliveries again (each at least once more), in position order with the endpoint's others."""
    count = WebhookDelivery.objects.filter(pk__in=delivery_ids).update(
        delivered_at=None, next_attempt_at=None, first_failed_at=None
    )
    transaction.on_commit(lambda: delivery_signal.committed(0))
    return count


# The worker's outcomes


@dataclass
class Attempt:
    """What one HTTP attempt gave."""

    delivery_id: int
    attempted_at: datetime
    status_code: int | None
    latency_ms: float
    succeeded: bool
    error: str = ""
    response_excerpt: str = ""


def retry_delay_s(attempts: int) -> float:
    """Exponential backoff with jitter: base·2^(n-1), capped, then a random half to whole of it."""
    config = notify_settings()
    delay = min(config.webhook_retry_max_delay_s, config.webhook_retry_base_s * 2 ** min(attempts - 1, 40))
    return delay * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret


@transaction.atomic
def webhook_attempts_record(
    *, endpoint_id: int, delivered: list[Attempt], failed: Attempt | None, now: datetime | None = None
) -> str | None:
    """Store the attempts of one page; mark the delivered ones; back the failed one off, or disable the
    endpoint when it has failed for WEBHOOK_RETRY_HOURS. Returns the reason when it was disabled."""
    now = now or timezone.now()
    attempts = [*delivered, *([failed] if failed else [])]
    WebhookAttempt.objects.bulk_create(
        [
            WebhookAttempt(
                delivery_id=a.delivery_id,
                attempted_at=a.attempted_at,
                status_code=a.status_code,
                latency_ms=a.latency_ms,
                succeeded=a.succeeded,
                error=a.error,
                response_excerpt=a.response_excerpt,
            )
            for a in attempts
        ]
    )
    if delivered:
        by_time: dict[datetime, list[int]] = {}
        for a in delivered:
            by_time.setdefault(a.attempted_at, []).append(a.delivery_id)
        ids = [a.delivery_id for a in delivered]
        WebhookDelivery.objects.filter(pk__in=ids).update(
            delivered_at=now, attempts=F("attempts") + 1, last_error="", first_failed_at=None
        )
    if failed is None:
        return None
    delivery = WebhookDelivery.objects.filter(pk=failed.delivery_id).first()
    if delivery is None:
        return None
    delivery.attempts += 1
    delivery.first_failed_at = delivery.first_failed_at or failed.attempted_at
    delivery.next_attempt_at = now + timedelta(seconds=retry_delay_s(delivery.attempts))
    delivery.last_error = (failed.error or f"HTTP {failed.status_code}")[:1000]
    delivery.save(update_fields=["attempts", "first_failed_at", "next_attempt_at", "last_error"])
    window = timedelta(hours=notify_settings().webhook_retry_hours)
    if now - delivery.first_failed_at >= window:
        reason = (
            f"Disabled at {now.isoformat(timespec='seconds')}: no delivery succeeded for "
            f"{_hours(window)} (WEBHOOK_RETRY_HOURS); event #{delivery.position} failed "
            f"{delivery.attempts} times since {delivery.first_failed_at.isoformat(timespec='seconds')}, "
            f"last: {delivery.last_error}"
        )
        webhook_endpoint_disable(endpoint_id=endpoint_id, reason=reason)
        return reason
    return None


def _hours(window: timedelta) -> str:
    hours = window.total_seconds() / 3600
    return f"{hours:g} hours" if hours >= 1 else f"{window.total_seconds():g} seconds"


# Leases


def lease_claim(*, name: str, owner: str, ttl_s: float, now: datetime | None = None) -> bool:
    """Whether `owner` holds the lease `name` for the next `ttl_s` seconds (taken when free or expired).

    A conditional UPDATE: of several processes at once exactly one matches, on PostgreSQL (the row lock
    and the re-checked WHERE) and on SQLite (one writer) alike.
    """
    now = now or timezone.now()
    until = now + timedelta(seconds=ttl_s)
    with transaction.atomic():
        taken = (
            WorkerLease.objects.filter(name=name)
            .filter(Q(owner=owner) | Q(expires_at__lt=now))
            .update(owner=owner, expires_at=until)
        )
        if taken:
            return True
        if WorkerLease.objects.filter(name=name).exists():
            return False
        try:
            with transaction.atomic():
                WorkerLease.objects.create(name=name, owner=owner, expires_at=until)
        except IntegrityError:
            return False
    return True


def lease_release(*, name: str, owner: str) -> None:
    """Give a lease back (at shutdown), so another process takes over at once."""
    WorkerLease.objects.filter(name=name, owner=owner).delete()


# Preferences


@transaction.atomic
def preference_save(*, user_id: int, email: bool = True, slack: bool = True, tools: Any = ()) -> Any:
    """Set an operator's notification preferences (channels, tool names or globs; empty: all tools)."""
    from .models import NotificationPreference

    if not isinstance(tools, list | tuple) or not all(isinstance(t, str) and t.strip() for t in tools):
        raise ApplicationError("tools: must be a list of tool names or globs", code="invalid", status=400)
    preference, _ = NotificationPreference.objects.update_or_create(
        user_id=user_id,
        defaults={"email": bool(email), "slack": bool(slack), "tools": [t.strip() for t in tools]},
    )
    return preference
