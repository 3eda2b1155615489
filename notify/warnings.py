"""Expiry warnings: a `tool_approval_expiring` event once per pending request, HITL_WARN_BEFORE_S
before its deadline, published by a periodic task of the server."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from channels.db import database_sync_to_async
from django.db import IntegrityError, transaction
from django.utils import timezone

from events.base import BaseEvent
from events.event_types import EventCategory
from events.services import events_record
from hitl.models import ApprovalRequest, ApprovalStatus

from .conf import notify_settings
from .models import ExpiryWarning

logger = logging.getLogger("notify")

EXPIRING = "tool_approval_expiring"  # server-only: tool_approval_


def approval_warn_expiring(*, now: datetime | None = None, limit: int = 500) -> int:
    """Publish `tool_approval_expiring` for each pending request due within HITL_WARN_BEFORE_S that has
    had none: the warning's row and its stored event in one transaction. Returns how many."""
    warn_before = notify_settings().warn_before_s
    if warn_before <= 0:
        return 0
    now = now or timezone.now()
    due = (
        ApprovalRequest.objects.filter(
            status=ApprovalStatus.PENDING,
            expires_at__gt=now,
            expires_at__lte=now + timedelta(seconds=warn_before),
        )
        .exclude(call_id__in=ExpiryWarning.objects.values("call_id"))
        .order_by("expires_at")
    )
    warned = 0
    for request in list(due[:limit]):
        with transaction.atomic():
            try:
                with transaction.atomic():
                    ExpiryWarning.objects.create(
                        call_id=request.call_id, warned_at=now, expires_at=request.expires_at
                    )
            except IntegrityError:
                continue  # another process warned first
            if not ApprovalRequest.objects.filter(pk=request.pk, status=ApprovalStatus.PENDING).exists():
                transaction.set_rollback(True)  # decided a moment ago: nothing to warn about
                continue
            event = BaseEvent(
                EXPIRING,
                EventCategory.HITL,
                session_id=request.session_id,
                correlation_id=request.correlation_id,
                data={
                    "call_id": request.call_id,
                    "tool_name": request.tool_name,
                    "agent": request.agent or None,
                    "expires_at": request.expires_at.isoformat(),
                    "seconds_left": round((request.expires_at - now).total_seconds(), 3),
                    "on_expire": request.on_expire,
                    "approver_group": request.approver_group,
                },
                source="notify",
            )
            events_record(events=[event])
            warned += 1
    if warned:
        logger.info("warned of %d approval requests about to expire", warned)
    return warned


async def warn_expiring_forever() -> None:
    """The server's periodic task: warn every HITL_WARN_INTERVAL_S seconds."""
    warn = database_sync_to_async(approval_warn_expiring, thread_sensitive=False)
    while True:
        interval = notify_settings().warn_interval_s
        try:
            await warn()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("expiry warnings failed; trying again in %ss", interval)
        await asyncio.sleep(interval)
