"""What every notifier that follows the store shares: the cursor's step, the pause after a receiver was
away, the people who may decide a request, and its link. The notifiers (notify.notifiers: e-mail and
the loop that runs them all; notify.slack) build on this; it builds on neither.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections.abc import Callable
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import Max

from events.models import StoredEvent
from hitl.models import ApprovalRequest

from .conf import notify_settings
from .models import NotificationPreference, NotifyCursor

logger = logging.getLogger("notify")

OPERATORS = "operators"
NEW = "tool_approval_required"
ESCALATED = "tool_approval_escalated"
PAUSE_MAX_S = 60.0
Handler = Callable[[dict[str, Any]], None]


class TryAgain(Exception):
    """The receiver is away (no connection, a 5xx, rate limited): stop here and repeat this event later,
    instead of passing over it."""


class Pause:
    """A growing pause after a receiver was away: 1 s, 2 s, 4 s … PAUSE_MAX_S, reset by a success."""

    def __init__(self) -> None:
        self.until = 0.0
        self.delay = 0.0

    def active(self) -> bool:
        return time.monotonic() < self.until

    def failed(self) -> None:
        self.delay = min(PAUSE_MAX_S, max(1.0, self.delay * 2))
        self.until = time.monotonic() + self.delay

    def succeeded(self) -> None:
        self.delay = 0.0
        self.until = 0.0

    def step(self, name: str, event_types: tuple[str, ...], handle: Handler) -> int:
        """notifier_step, unless paused; a TryAgain pauses it, a handled event resets the pause."""
        if self.active():
            return 0

        def handled(row: dict[str, Any]) -> None:
            try:
                handle(row)
            except TryAgain:
                self.failed()
                raise
            self.succeeded()

        return notifier_step(name=name, event_types=event_types, handle=handled)


def notifier_step(*, name: str, event_types: tuple[str, ...], handle: Handler, limit: int = 200) -> int:
    """Handle the next stored events of `event_types` after the notifier's cursor; how many were read."""
    cursor, created = NotifyCursor.objects.get_or_create(
        name=name, defaults={"position": StoredEvent.objects.aggregate(m=Max("position"))["m"] or 0}
    )
    if created:
        return 0
    rows: list[dict[str, Any]] = [
        dict(row)
        for row in StoredEvent.objects.filter(position__gt=cursor.position, event_category="hitl")
        .order_by("position")
        .values("position", "event_type", "data", "timestamp")[:limit]
    ]
    for index, row in enumerate(rows):
        if row["event_type"] in event_types:
            try:
                handle(row)
            except TryAgain as error:
                logger.warning("%s notifier: event #%s will be tried again: %s", name, row["position"], error)
                return index
            except Exception:
                # Logged and passed: one bad event (a mail server that refused) must not stop the rest.
                logger.exception("%s notifier: event #%s failed", name, row["position"])
        NotifyCursor.objects.filter(pk=cursor.pk).update(position=row["position"])
    return len(rows)


def request_url(call_id: str) -> str:
    """The link to the request's page."""
    from urllib.parse import quote

    return f"{notify_settings().base_url}/hitl/requests/{quote(call_id, safe='')}/"


def _wants(
    user_id: int, preferences: dict[int, NotificationPreference], tool_name: str, channel: str
) -> bool:
    preference = preferences.get(user_id)
    if preference is None:
        return True
    if not getattr(preference, channel):
        return False
    return not preference.tools or any(
        fnmatch.fnmatchcase(tool_name, pattern) for pattern in preference.tools
    )


def deciders(request: ApprovalRequest, *, group: str | None = None, channel: str = "email") -> list[Any]:
    """The active people with an e-mail address who may decide `request` (its approver group, else the
    operators; or `group`) and whose preferences take this tool on this channel."""
    name = group or request.approver_group or OPERATORS
    users = list(
        get_user_model()
        ._default_manager.filter(is_active=True, groups__name=name)
        .exclude(email="")
        .order_by("pk")
        .distinct()
    )
    preferences = {p.user_id: p for p in NotificationPreference.objects.filter(user__in=users)}
    return [u for u in users if _wants(u.pk, preferences, request.tool_name, channel)]
