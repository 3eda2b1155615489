"""Slack: a Block Kit message in SLACK_CHANNEL for each request that waits for a person, kept up to date
whoever decides and wherever, with thread replies on escalation and before the deadline.

The notifier follows the store (notify.following.notifier_step), so Slack hears only of what committed,
and every change of a request (a decision on the page, over REST, by expiry, one approval of several,
a cancellation) updates its message from the request's row: the message always shows the row's state.
Slack being away (no connection, a 5xx, rate limited) stops the notifier at that event and it is tried
again with a growing pause; an answer Slack gives with `ok: false` (a channel that does not exist) is
logged and passed over, as a refused e-mail is.

What people do in Slack comes back through `POST /integrations/slack/interactions/` (notify.views).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime
from typing import Any
from urllib.error import URLError

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackRequestError

from hitl.models import ApprovalRequest, ApprovalStatus, OnExpire

from .conf import notify_settings
from .following import ESCALATED, NEW, Pause, TryAgain, deciders, request_url
from .models import SlackMessage

logger = logging.getLogger("notify")

DECIDED = "hitl_decision_made"
APPROVAL_RECORDED = "hitl_approval_recorded"
CANCELLED = "tool_approval_cancelled"
EXPIRING = "tool_approval_expiring"
EVENT_TYPES = (NEW, DECIDED, APPROVAL_RECORDED, CANCELLED, ESCALATED, EXPIRING)

# The buttons' action ids, and the modals' callback ids (notify.views reads them back).
APPROVE = "hitl_approve"
EDIT = "hitl_edit"
REJECT = "hitl_reject"
ACTIONS = (APPROVE, EDIT, REJECT)
EDIT_MODAL = "hitl_edit_modal"
REJECT_MODAL = "hitl_reject_modal"
ARGUMENTS_BLOCK = "arguments"
COMMENT_BLOCK = "comment"
VALUE_ACTION = "value"

# Slack's limits: a section's text, a header, a plain-text input's value.
SECTION_LIMIT = 3000
HEADER_LIMIT = 150
INPUT_LIMIT = 3000
USER_CACHE_S = 300.0


def slack_configured() -> bool:
    """Whether the server posts to Slack (SLACK_BOT_TOKEN and SLACK_CHANNEL)."""
    config = notify_settings()
    return bool(config.slack_bot_token and config.slack_channel)


def slack_client() -> WebClient:
    """A Web API client for SLACK_API_URL with the bot token (slack_sdk; its own retries are off, the
    notifier repeats the event instead)."""
    config = notify_settings()
    return WebClient(token=config.slack_bot_token, base_url=config.slack_api_url, timeout=10)


def slack_call(method: str, **arguments: Any) -> dict[str, Any]:
    """Call a Web API method; TryAgain when Slack is away, SlackApiError when it refused the call."""
    try:
        response = slack_client().api_call(method, json=arguments)
    except SlackApiError as error:
        status = error.response.status_code if error.response is not None else 0
        if status == 429 or status >= 500:
            raise TryAgain(f"Slack's {method} answered {status}") from None
        raise
    except (URLError, OSError, SlackRequestError, TimeoutError) as error:
        raise TryAgain(f"Slack's {method} could not be reached: {error}") from None
    return dict(response.data) if isinstance(response.data, dict) else {}


# What the message says


def escape(text: str) -> str:
    """Slack's mrkdwn escapes: &, < and > (the rest is shown as written)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _date(moment: datetime | None) -> str:
    """A time Slack shows in each reader's own time zone, with the UTC form as the fallback."""
    if moment is None:
        return ""
    return f"<!date^{int(moment.timestamp())}^{{date_short_pretty}} {{time_secs}}|{moment.isoformat()}>"


def _json_block(value: Any) -> str:
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)
    return "```" + _clip(escape(text), SECTION_LIMIT - 8) + "```"


def _decider(request: ApprovalRequest) -> str:
    if request.decided_by_username:
        return f"by {escape(request.decided_by_username)} ({request.channel or 'unknown channel'})"
    if request.rule:
        return f"by rule `{escape(request.rule)}`"
    return f"({request.channel})" if request.channel else ""


def outcome_line(request: ApprovalRequest) -> str:
    """One line for the request's state, as its row has it."""
    status = request.status
    when = _date(request.decided_at)
    if status == ApprovalStatus.APPROVED:
        line = f":white_check_mark: *Approved* {_decider(request)} {when}"
    elif status == ApprovalStatus.EDITED:
        line = f":pencil2: *Approved with edited arguments* {_decider(request)} {when}"
    elif status == ApprovalStatus.REJECTED:
        line = f":x: *Rejected* {_decider(request)} {when}"
    elif status == ApprovalStatus.EXPIRED:
        outcome = "approved" if request.on_expire == OnExpire.APPROVE else "rejected"
        line = f":hourglass: *Expired* {when}: {outcome} by its deadline (on_expire {request.on_expire})"
    elif status == ApprovalStatus.CANCELLED:
        line = f":no_entry_sign: *Withdrawn* by the agent {when}"
    else:
        line = f":hourglass_flowing_sand: *Waiting for a decision* until {_date(request.expires_at)}"
    if request.comment and status != ApprovalStatus.PENDING:
        line += f"\n> {_clip(escape(request.comment), 1000)}"
    return " ".join(line.split(" ")).strip()


def message_blocks(request: ApprovalRequest, *, mentions: str = "") -> list[dict[str, Any]]:
    """The request's message: what is asked, by whom, until when, its arguments, its state, and the
    Approve, Edit and Reject buttons while it waits."""
    fields = [
        f"*Tool*\n`{escape(request.tool_name)}`",
        f"*Agent*\n{escape(request.agent) or '(none)'}",
        f"*Session*\n{escape(request.session_id)}",
        f"*Deadline*\n{_date(request.expires_at)}",
    ]
    if request.approvals_required > 1 or request.approvals:
        who = ", ".join(escape(str(a.get("user", ""))) for a in request.approvals or [])
        fields.append(
            f"*Approvals*\n{len(request.approvals or [])} of {request.approvals_required}"
            + (f": {who}" if who else "")
        )
    if request.rule:
        fields.append(f"*Rule*\n`{escape(request.rule)}`")
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": _clip(f"Approval: {request.tool_name}", HEADER_LIMIT)},
        },
        {"type": "section", "fields": [{"type": "mrkdwn", "text": _clip(f, 2000)} for f in fields]},
    ]
    if request.reason:
        blocks.append(
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": _clip(f"*Reason*\n{escape(request.reason)}", SECTION_LIMIT),
                },
            }
        )
    blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _json_block(request.arguments)}})
    if request.modified_args is not None:
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": "*Edited to*\n" + _json_block(request.modified_args)},
            }
        )
    if request.escalated_at is not None:
        blocks.append(
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": f":rotating_light: Escalated to *{escape(request.escalate_to_group or '')}* "
                        f"{_date(request.escalated_at)}",
                    }
                ],
            }
        )
    blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": outcome_line(request)}})
    if request.status == ApprovalStatus.PENDING:
        blocks.append(
            {
                "type": "actions",
                "block_id": "hitl_decide",
                "elements": [
                    _button("Approve", APPROVE, request.call_id, style="primary"),
                    _button("Edit", EDIT, request.call_id),
                    _button("Reject", REJECT, request.call_id, style="danger"),
                ],
            }
        )
    context = f"<{request_url(request.call_id)}|Open on the desk> · call `{escape(request.call_id)}`"
    if mentions:
        context += f" · {mentions}"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _clip(context, 2000)}]})
    return blocks


def _button(text: str, action_id: str, call_id: str, *, style: str | None = None) -> dict[str, Any]:
    button: dict[str, Any] = {
        "type": "button",
        "text": {"type": "plain_text", "text": text},
        "action_id": action_id,
        "value": call_id,
    }
    if style:
        button["style"] = style
    return button


def message_text(request: ApprovalRequest) -> str:
    """The notification's plain text (Slack shows it where blocks cannot be: alerts, screen readers)."""
    state = "waits for approval" if request.status == ApprovalStatus.PENDING else request.status
    return _clip(f"{request.tool_name} by {request.agent or 'an agent'} {state} ({request.call_id})", 3000)


def edit_modal(request: ApprovalRequest) -> dict[str, Any]:
    """The Edit modal: the arguments as JSON to change (checked against the tool's schema on submit)."""
    text = json.dumps(request.arguments, indent=2, ensure_ascii=False, sort_keys=True)
    blocks: list[dict[str, Any]] = [
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": f"Approve `{escape(request.tool_name)}` with these arguments (JSON).",
            },
        }
    ]
    if len(text) > INPUT_LIMIT:
        blocks.append(
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": f"These arguments have {len(text)} characters, more than a Slack input holds "
                    f"({INPUT_LIMIT}): <{request_url(request.call_id)}|edit them on the desk>.",
                },
            }
        )
        return _modal(EDIT_MODAL, "Edit arguments", request.call_id, blocks, submit=None)
    blocks.append(
        {
            "type": "input",
            "block_id": ARGUMENTS_BLOCK,
            "label": {"type": "plain_text", "text": "Arguments"},
            "element": {
                "type": "plain_text_input",
                "action_id": VALUE_ACTION,
                "multiline": True,
                "initial_value": text,
                "max_length": INPUT_LIMIT,
            },
        }
    )
    blocks.append(_comment_input(optional=True))
    return _modal(EDIT_MODAL, "Edit arguments", request.call_id, blocks, submit="Approve edited")


def reject_modal(request: ApprovalRequest) -> dict[str, Any]:
    """The Reject modal: a comment for the agent."""
    blocks = [
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": f"Reject `{escape(request.tool_name)}`; the agent reads why."},
        },
        _comment_input(optional=True),
    ]
    return _modal(REJECT_MODAL, "Reject", request.call_id, blocks, submit="Reject")


def _comment_input(*, optional: bool) -> dict[str, Any]:
    return {
        "type": "input",
        "block_id": COMMENT_BLOCK,
        "optional": optional,
        "label": {"type": "plain_text", "text": "Comment"},
        "element": {
            "type": "plain_text_input",
            "action_id": VALUE_ACTION,
            "multiline": True,
            "max_length": 2000,
        },
    }


def _modal(
    callback_id: str, title: str, call_id: str, blocks: list[Any], *, submit: str | None
) -> dict[str, Any]:
    view: dict[str, Any] = {
        "type": "modal",
        "callback_id": callback_id,
        "private_metadata": call_id,
        "title": {"type": "plain_text", "text": title},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": blocks,
    }
    if submit:
        view["submit"] = {"type": "plain_text", "text": submit}
    return view


# Who is who


class SlackUsers:
    """Slack user id -> e-mail address (users.info) and e-mail -> Slack user id (users.lookupByEmail),
    kept for USER_CACHE_S: a click must be answered within Slack's 3 seconds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._emails: dict[str, tuple[float, str | None]] = {}
        self._ids: dict[str, tuple[float, str | None]] = {}

    def clear(self) -> None:
        with self._lock:
            self._emails.clear()
            self._ids.clear()

    def _cached(self, table: dict[str, tuple[float, str | None]], key: str) -> tuple[bool, str | None]:
        with self._lock:
            hit = table.get(key)
        if hit is not None and time.monotonic() - hit[0] < USER_CACHE_S:
            return True, hit[1]
        return False, None

    def _keep(self, table: dict[str, tuple[float, str | None]], key: str, value: str | None) -> None:
        with self._lock:
            if len(table) > 10_000:
                table.clear()
            table[key] = (time.monotonic(), value)

    def email_of(self, slack_user_id: str) -> str | None:
        """The Slack user's e-mail address (needs the users:read.email scope), or None."""
        found, email = self._cached(self._emails, slack_user_id)
        if found:
            return email
        try:
            user = slack_call("users.info", user=slack_user_id).get("user") or {}
        except SlackApiError as error:
            logger.warning("Slack's users.info refused %s: %s", slack_user_id, error)
            user = {}
        profile = user.get("profile") or {}
        email = profile.get("email") if not user.get("deleted") and not user.get("is_bot") else None
        email = email.strip() if isinstance(email, str) and email.strip() else None
        self._keep(self._emails, slack_user_id, email)
        return email

    def id_of(self, email: str) -> str | None:
        """The Slack user with this e-mail address, or None."""
        key = email.lower()
        found, user_id = self._cached(self._ids, key)
        if found:
            return user_id
        try:
            user = slack_call("users.lookupByEmail", email=email).get("user") or {}
        except SlackApiError:
            user = {}  # users_not_found: this person is not in the workspace
        user_id = user.get("id") if isinstance(user.get("id"), str) else None
        self._keep(self._ids, key, user_id)
        return user_id


slack_users = SlackUsers()


def mentions_for(request: ApprovalRequest, *, group: str | None = None) -> str:
    """`<@U…>` for each person who may decide and whose preferences take Slack for this tool."""
    ids = [slack_users.id_of(user.email) for user in deciders(request, group=group, channel="slack")]
    return " ".join(f"<@{user_id}>" for user_id in ids if user_id)


# Following the store


def slack_handle(row: dict[str, Any]) -> None:
    """Post, update or reply in a thread for one stored event about a request."""
    call_id = row["data"].get("call_id")
    if not isinstance(call_id, str):
        return
    request = ApprovalRequest.objects.filter(call_id=call_id).first()
    if request is None:
        return
    message = SlackMessage.objects.filter(call_id=call_id).first()
    channel = notify_settings().slack_channel
    if row["event_type"] == NEW:
        if message is not None or request.status != ApprovalStatus.PENDING:
            return  # posted already (an event repeated after a crash), or a rule decided it at once
        mentions = mentions_for(request)
        answer = slack_call(
            "chat.postMessage",
            channel=channel,
            text=message_text(request),
            blocks=message_blocks(request, mentions=mentions),
            unfurl_links=False,
        )
        SlackMessage.objects.create(
            call_id=call_id, channel=str(answer.get("channel") or channel), ts=str(answer.get("ts") or "")
        )
        return
    if message is None or not message.ts:
        return  # never posted (decided by a rule, or Slack refused it): nothing to update
    if row["event_type"] == EXPIRING:
        if request.status != ApprovalStatus.PENDING:
            return
        slack_call(
            "chat.postMessage",
            channel=message.channel,
            thread_ts=message.ts,
            text=f":alarm_clock: {request.tool_name} expires {_date(request.expires_at)} "
            f"(then: {request.on_expire}). {mentions_for(request)}".strip(),
        )
        return
    slack_call(
        "chat.update",
        channel=message.channel,
        ts=message.ts,
        text=message_text(request),
        blocks=message_blocks(request),
    )
    if row["event_type"] == ESCALATED and request.status == ApprovalStatus.PENDING:
        group = request.escalate_to_group or None
        slack_call(
            "chat.postMessage",
            channel=message.channel,
            thread_ts=message.ts,
            text=f":rotating_light: Escalated to {group}. {mentions_for(request, group=group)}".strip(),
        )


slack_pause = Pause()


def slack_step() -> int:
    """The Slack notifier's step (none while paused after Slack was away)."""
    return slack_pause.step("slack", EVENT_TYPES, slack_handle)
