"""The approval page: operators watch the pending queue live and approve, edit or reject.

The first paint is server-rendered from `pending_approvals()`, so the page is useful before its
WebSocket (/ws/hitl/) connects; hitl/static/hitl/approvals.js then keeps it current. Decisions are
POSTed (JSON, with the CSRF token) to `decide`, which calls `approval_decide` with channel "page" like
every other surface calls it; a plain form POST works too, for the Approve button without JavaScript.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import formats, timezone
from django.views.decorators.http import require_POST, require_safe

from core.errors import ApplicationError
from core.json_input import check_form_encoding, invalid, parse_json
from events.base import format_timestamp
from events.views import forbidden

from .conf import tool_risk
from .inputs import decision_input
from .models import ApprovalRequest, ApprovalStatus, DecisionChannel
from .policies import standing_active, standing_revoke
from .selectors import (
    VIEW_PERMISSION,
    approval_as_dict,
    approval_history,
    approval_visible_get,
    pending_approvals,
)
from .services import approval_decide, user_may_decide

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
# Below this many seconds left a card's countdown turns amber, then red (the page's JS uses the same).
SOON_S = 120
URGENT_S = 30


def short_duration(seconds: float) -> str:
    """A countdown or an age as an operator glances at it: 45s, 3m 05s, 2h 04m, 3d 2h."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


def pretty_arguments(arguments: Any) -> str:
    """Arguments as the page shows them (the JS writes them the same way): indented, non-ASCII kept."""
    return json.dumps(arguments, indent=2, ensure_ascii=False)


def _moment(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def moment_text(value: str | datetime | None) -> str:
    """A moment as every page writes it, "2026-12-05 15:00:07 UTC" (events/static/events/time.js
    writes the same in the browser); "" for None."""
    if value is None or value == "":
        return ""
    moment = _moment(value) if isinstance(value, str) else value
    return str(formats.date_format(timezone.localtime(moment), "DATETIME_FORMAT"))


def card_context(approval: dict[str, Any], now: datetime) -> dict[str, Any]:
    """What a card shows at first paint, beside the approval's own fields."""
    left = (_moment(approval["expires_at"]) - now).total_seconds()
    age = (now - _moment(approval["created_at"])).total_seconds()
    urgency = "urgent" if left <= URGENT_S else "soon" if left <= SOON_S else ""
    return {
        **approval,
        "approvals_text": approvals_text(approval),
        "arguments_pretty": pretty_arguments(approval["arguments"]),
        "age": short_duration(age),
        "time_left": short_duration(left) if left > 0 else "expiring…",
        "urgency": urgency,
        "created_at_text": moment_text(approval["created_at"]),
        "expires_at_text": moment_text(approval["expires_at"]),
    }


def decided_by_text(approval: ApprovalRequest) -> str:
    """Who decided, as the request page says it: the person and the channel ("olga (api)"); else what
    decided ("expiry", "approval policy (rule tidy@2)", "the agent (withdrawn)")."""
    if approval.status == ApprovalStatus.PENDING:
        return "—"
    channel = str(approval.get_channel_display()) if approval.channel else ""
    name = approval.decided_by_username
    if name:
        return f"{name} ({approval.channel})" if channel else name
    if approval.channel == DecisionChannel.POLICY and approval.rule:
        return f"{channel} (rule {approval.rule})"
    if channel:
        return channel
    if approval.status == ApprovalStatus.CANCELLED:
        return "the agent (withdrawn)"
    return "—"


def approvals_text(approval: dict[str, Any]) -> str:
    """How far a quorum is, as the card says it: "1 of 2: alice" (the page's JS writes the same)."""
    names = ", ".join(a["user"] for a in approval.get("approvals") or [])
    text = f"{len(approval.get('approvals') or [])} of {approval.get('approvals_required', 1)}"
    if names:
        text += f": {names}"
    if approval.get("approver_group"):
        text += f" (group {approval['approver_group']})"
    return text


def page_links() -> dict[str, str]:
    """Admin URLs the cards link to (the JS builds the same links for cards that arrive live)."""
    return {
        "admin_search": reverse("admin:hitl_approvalrequest_changelist") + "?q=",
        "trace": reverse("admin:events_storedevent_trace") + "?correlation_id=",
        "timeline": reverse("admin:events_storedevent_timeline") + "?session_id=",
        "decide": reverse("hitl:decide", args=["__call_id__"]),
    }


@login_required
@require_safe
def approvals_page(request: HttpRequest) -> HttpResponse:
    """The pending queue, soonest deadline first, then live over /ws/hitl/."""
    if not request.user.has_perm(VIEW_PERMISSION):
        return forbidden(request, page="The approval page", role="operator")
    now = timezone.now()
    pending = sorted(pending_approvals(), key=lambda a: (a["expires_at"], a["created_at"]))
    links = page_links()
    config = {
        "ws_path": "/ws/hitl/",
        "server_now": format_timestamp(now),
        "may_decide": user_may_decide(request.user),
        "links": links,
        "soon_s": SOON_S,
        "urgent_s": URGENT_S,
        "pending": pending,
    }
    context = {
        "cards": [card_context(approval, now) for approval in pending],
        "config": config,
        "links": links,
        "may_decide": config["may_decide"],
        "standing": standing_active(),
        "nav": "approvals",
    }
    return TemplateResponse(request, "hitl/approvals.html", context)


@login_required
@require_safe
def request_page(request: HttpRequest, call_id: str) -> HttpResponse:
    """One request, shareable: its state, its controls while it waits (live, as on the queue), and its
    history (every stored event about it: asked, seen by a rule, each approval, escalation, warning,
    decision). The links in e-mails and Slack messages lead here."""
    if not request.user.has_perm(VIEW_PERMISSION):
        return forbidden(request, page="An approval request", role="operator")
    try:
        approval = approval_visible_get(user=request.user, call_id=call_id)
    except ApplicationError:
        return TemplateResponse(
            request, "hitl/request_missing.html", {"call_id": call_id, "nav": "approvals"}, status=404
        )
    now = timezone.now()
    data = approval_as_dict(approval)
    pending = [data] if approval.status == "pending" else []
    links = page_links()
    config = {
        "ws_path": "/ws/hitl/",
        "server_now": format_timestamp(now),
        "may_decide": user_may_decide(request.user),
        "links": links,
        "soon_s": SOON_S,
        "urgent_s": URGENT_S,
        "pending": pending,
        "only_call_id": approval.call_id,
    }
    context = {
        "approval": data,
        "cards": [card_context(item, now) for item in pending],
        "history": approval_history(approval),
        "config": config,
        "links": links,
        "may_decide": config["may_decide"],
        "nav": "approvals",
        "arguments_pretty": pretty_arguments(approval.arguments),
        "modified_pretty": pretty_arguments(approval.modified_args) if approval.modified_args else "",
        "decided_by_text": decided_by_text(approval),
        "decided_at_text": moment_text(approval.decided_at),
    }
    return TemplateResponse(request, "hitl/request.html", context)


# Deciding


def _error(error: ApplicationError) -> JsonResponse:
    return JsonResponse({"detail": error.message, "code": error.code, **error.extra}, status=error.status)


def _json_body(request: HttpRequest) -> dict[str, Any]:
    try:
        body = request.body
    except RequestDataTooBig:
        raise ApplicationError(
            "the request body is too large", code="payload_too_large", status=413
        ) from None
    try:
        # The one JSON entrance: syntax, NaN, a key twice, depth, NUL, lone surrogates.
        payload = parse_json(body, "body", path="")
    except ApplicationError as error:
        field = _field_of(error)
        if field == "body" or field.startswith("["):
            error.code = "invalid_body"  # the body as a whole is not a JSON object this endpoint takes
        raise
    if not isinstance(payload, dict):
        raise invalid("body", "must be a JSON object", code="invalid_body")
    return payload


def _field_of(error: ApplicationError) -> str:
    errors = error.extra.get("errors") or [{}]
    return str(errors[0].get("field") or "")


def _form_body(request: HttpRequest) -> dict[str, Any]:
    if request.content_type == "application/x-www-form-urlencoded":
        # Django decodes bad UTF-8 (a lone surrogate) as U+FFFD: a comment other than the one sent.
        check_form_encoding(request.body)
    decision = request.POST.get("decision", "")
    payload: dict[str, Any] = {"decision": decision, "comment": request.POST.get("comment", "")}
    remember_scope = request.POST.get("remember_scope", "")
    if remember_scope:
        ttl = request.POST.get("remember_ttl_s", "")
        try:
            ttl_s: Any = float(ttl)
        except ValueError:
            raise invalid("remember.ttl_s", f"must be a number of seconds, not {ttl!r}") from None
        payload["remember"] = {"scope": remember_scope, "ttl_s": ttl_s}
    if decision == "EDIT":
        text = request.POST.get("modified_args", "")
        if not text.strip():
            raise invalid("modified_args", "enter the arguments as a JSON object, e.g. {}")
        payload["modified_args"] = parse_json(text, "modified_args")
    return payload


def _decide(request: HttpRequest, call_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    decided = decision_input(payload)
    decision, modified_args, comment = decided["decision"], decided["modified_args"], decided["comment"]
    approval = approval_decide(
        call_id=call_id,
        user=request.user,
        decision=decision,
        modified_args=modified_args,
        comment=comment,
        channel=DecisionChannel.PAGE,
        remember=decided["remember"],
    )
    return approval_as_dict(approval)


@require_POST
def decide(request: HttpRequest, call_id: str) -> HttpResponse:
    """Decide one request as the signed-in user: JSON in, JSON out (or a form post and a redirect)."""
    from_form = request.content_type in FORM_TYPES
    page = reverse("hitl:approvals")
    if not request.user.is_authenticated:
        if from_form:
            return redirect_to_login(page)
        return JsonResponse({"detail": "Sign in to decide.", "code": "not_authenticated"}, status=401)
    try:
        payload = _form_body(request) if from_form else _json_body(request)
        if from_form and payload["decision"] != "REJECT" and request.POST.get("confirm") != "high_risk":
            # The page asks twice before a high-risk approval; without JavaScript, the form's box does.
            tool_name = (
                ApprovalRequest.objects.filter(call_id=call_id).values_list("tool_name", flat=True).first()
            )
            if tool_name is not None and tool_risk(tool_name) == "high":
                messages.error(
                    request,
                    f"{call_id}: {tool_name} is a high-risk tool: tick “I checked this high-risk call” and "
                    "approve again. Nothing was decided.",
                )
                return HttpResponseRedirect(page)
        approval = _decide(request, call_id, payload)
    except ApplicationError as error:
        if not from_form:
            return _error(error)
        messages.error(request, f"{call_id}: {error.message}")
        return HttpResponseRedirect(page)
    if from_form:
        messages.success(request, f"{approval['tool_name']} ({call_id}): {approval['status']}.")
        return HttpResponseRedirect(page)
    return JsonResponse({"request": approval})


@require_POST
def revoke_standing(request: HttpRequest, standing_id: int) -> HttpResponse:
    """Revoke a standing approval from the page (a form post and a redirect back)."""
    page = reverse("hitl:approvals")
    if not request.user.is_authenticated:
        return redirect_to_login(page)
    try:
        standing = standing_revoke(standing_id=standing_id, user=request.user)
    except ApplicationError as error:
        if error.status == 403:
            return forbidden(request, page="Revoking a standing approval", role="operator")
        messages.error(request, error.message)
        return HttpResponseRedirect(page)
    messages.success(request, f"Standing approval {standing.pk} ({standing.tool_name}) revoked.")
    return HttpResponseRedirect(page)
