"""Notifiers that follow the store: e-mail (and Slack, notify.slack) about approval requests.

Each reads the stored `hitl` events after its cursor (a `NotifyCursor` row), in position order, from a
task of the server: never in the request's transaction, and nothing is told of a change that rolled back.
One process at a time works on each (a lease); the cursor moves after each event is handled, so a crash
repeats at most the event being handled. A notifier that starts for the first time begins at the
store's end: it does not announce history.
"""

from __future__ import annotations

import asyncio
import logging
import os
import smtplib
import socket
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.db import transaction
from django.template.loader import render_to_string
from django.utils import timezone

from events.event_store import event_store
from hitl.models import ApprovalRequest, ApprovalStatus

from .conf import notify_settings
from .following import (
    ESCALATED,
    NEW,
    Pause,
    TryAgain,
    deciders,
    request_url,
)
from .models import PendingEmail
from .services import lease_claim

logger = logging.getLogger("notify")

LEASE_S = 30.0

# E-mail


def _subject(kind: str, request: ApprovalRequest) -> str:
    what = "Escalated to you" if kind == "escalated" else "Approval needed"
    return f"[{what}] {request.tool_name}" + (f" by {request.agent}" if request.agent else "")


def email_handle(row: dict[str, Any]) -> None:
    """A new or escalated request: each person who may decide gets a message (or a digest line)."""
    call_id = row["data"].get("call_id")
    request = ApprovalRequest.objects.filter(call_id=call_id).first()
    if request is None or request.status != ApprovalStatus.PENDING:
        return  # decided already (a policy, or someone quick): nothing to ask for
    kind = "escalated" if row["event_type"] == ESCALATED else "new"
    group = request.escalate_to_group if kind == "escalated" and request.escalate_to_group else None
    people = deciders(request, group=group)
    if not people:
        return
    if notify_settings().email_digest_s > 0:
        now = timezone.now()
        PendingEmail.objects.bulk_create(
            [PendingEmail(user=u, call_id=request.call_id, kind=kind, created_at=now) for u in people]
        )
        return
    context = {"request": request, "kind": kind, "url": request_url(request.call_id)}
    body = render_to_string("notify/request_email.txt", context)
    messages = [EmailMessage(_subject(kind, request), body, to=[u.email]) for u in people]
    send_mail_or_try_again(messages)


def send_mail_or_try_again(messages: list[EmailMessage]) -> None:
    """Send; a mail server that cannot be reached (or answers 4xx: try later) is TryAgain, so the
    event is sent later rather than lost; a refusal (5xx, bad address) is an error, logged and passed."""
    try:
        get_connection().send_messages(messages)
    except smtplib.SMTPResponseException as error:
        if 400 <= error.smtp_code < 500:
            raise TryAgain(f"the mail server answered {error.smtp_code}") from None
        raise
    except (smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError, OSError) as error:
        raise TryAgain(f"the mail server could not be reached: {error}") from None


def email_digest_send(*, now: datetime | None = None) -> int:
    """One message per person with what waited for them (NOTIFY_EMAIL_DIGEST_S); how many were sent."""
    now = now or timezone.now()
    with transaction.atomic():
        rows = list(
            PendingEmail.objects.select_for_update().filter(created_at__lte=now).select_related("user")
        )
        PendingEmail.objects.filter(pk__in=[r.pk for r in rows]).delete()
    by_user: dict[int, list[PendingEmail]] = {}
    for row in rows:
        by_user.setdefault(row.user_id, []).append(row)
    requests = {
        r.call_id: r for r in ApprovalRequest.objects.filter(call_id__in={row.call_id for row in rows})
    }
    messages = []
    for items in by_user.values():
        user = items[0].user
        entries = [
            {"request": requests[i.call_id], "kind": i.kind, "url": request_url(i.call_id)}
            for i in items
            if i.call_id in requests and requests[i.call_id].status == ApprovalStatus.PENDING
        ]
        if not entries or not user.email:
            continue
        body = render_to_string("notify/digest_email.txt", {"entries": entries})
        messages.append(
            EmailMessage(f"[Approvals] {len(entries)} request(s) waiting for you", body, to=[user.email])
        )
    if messages:
        get_connection().send_messages(messages)
    return len(messages)


# The loop in the server


class Follower:
    """Runs the notifiers' steps when the store commits (or every second), one process at a time."""

    def __init__(self) -> None:
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def committed(self, last_position: int) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:
                pass

    async def run(self, steps: list[tuple[str, Callable[[], Any]]]) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        event_store.add_commit_listener(self.committed)
        last_digest = self._loop.time()
        while True:
            self._wake.clear()
            for name, step in steps:
                try:
                    if await database_sync_to_async(lease_claim, thread_sensitive=False)(
                        name=name, owner=self.owner, ttl_s=LEASE_S
                    ):
                        while await database_sync_to_async(step, thread_sensitive=False)() >= 200:
                            pass
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("%s notifier failed; trying again", name)
            digest_s = notify_settings().email_digest_s
            if digest_s > 0 and self._loop.time() - last_digest >= digest_s:
                last_digest = self._loop.time()
                try:
                    await database_sync_to_async(email_digest_send, thread_sensitive=False)()
                except Exception:
                    logger.exception("the e-mail digest failed; trying again next period")
            try:
                await asyncio.wait_for(self._wake.wait(), 1.0)
            except TimeoutError:
                pass


email_pause = Pause()


def email_step() -> int:
    """The e-mail notifier's step (none while paused after the mail server was away)."""
    return email_pause.step("email", (NEW, ESCALATED), email_handle)


def notifier_steps() -> list[tuple[str, Callable[[], Any]]]:
    """The notifiers this server runs: e-mail when NOTIFY_EMAIL (a mail server is named), Slack when
    SLACK_BOT_TOKEN and SLACK_CHANNEL are set."""
    from .slack import slack_configured, slack_step

    steps: list[tuple[str, Callable[[], Any]]] = []
    if getattr(settings, "NOTIFY_EMAIL", True):
        steps.append(("email", email_step))
    if slack_configured():
        steps.append(("slack", slack_step))
    return steps


async def notifiers_forever() -> None:
    """The server's task: follow the store for every notifier."""
    await Follower().run(notifier_steps())
