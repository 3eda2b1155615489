"""`POST /integrations/slack/interactions/`: what people do in Slack (the buttons, the modals); and
`/hitl/notifications/`, where an operator chooses what they hear about.

Only requests Slack signed with SLACK_SIGNING_SECRET, at most 5 minutes old, are read (slack_sdk's
SignatureVerifier); anything else is a 401 and logged. The Slack user acts as the active Django user with
the same e-mail address (Slack's users.info), through the same service and checks as the page
(hitl.services.approval_decide, channel `slack`): no account, no permission, a request decided already
are refused to that person alone (an ephemeral message, or the modal's error), logged, and nothing is
decided. An action or modal this server does not know is a 400, logged.

The view is async and every sync step (the database, Slack's Web API) runs in a worker thread, never on
the thread Django's sync views share: Slack wants its answer within 3 seconds.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qs

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier

from core.async_views import off_shared_thread
from core.errors import ApplicationError
from core.json_input import check_form_encoding, check_text, json_type, parse_json
from events.views import forbidden
from hitl.models import DecisionChannel
from hitl.services import approval_decidable_get, approval_decide

from .conf import notify_settings
from .following import TryAgain
from .models import NotificationPreference
from .services import preference_save
from .slack import (
    APPROVE,
    ARGUMENTS_BLOCK,
    COMMENT_BLOCK,
    EDIT,
    EDIT_MODAL,
    REJECT,
    REJECT_MODAL,
    VALUE_ACTION,
    edit_modal,
    reject_modal,
    slack_call,
    slack_users,
)

logger = logging.getLogger("notify")

MAX_BODY_BYTES = 256 * 1024
DECISION_OF = {APPROVE: "APPROVE", EDIT: "EDIT", REJECT: "REJECT", EDIT_MODAL: "EDIT", REJECT_MODAL: "REJECT"}


def _error(status: int, code: str, detail: str) -> JsonResponse:
    return JsonResponse({"detail": detail, "code": code}, status=status)


class Refused(Exception):
    """An interaction refused to the person who made it (told to them alone, nothing decided)."""


def _object(value: Any) -> dict[str, Any]:
    """`value` if it is an object, else an empty one (a field of the wrong shape is as good as absent)."""
    return value if isinstance(value, dict) else {}


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise ApplicationError(f"{field}: must be a non-empty string, not {json_type(value)}", status=400)
    return value


def _payload(body: bytes) -> dict[str, Any]:
    """The `payload` field of Slack's form body, as a JSON object checked at the entrance."""
    check_form_encoding(body)
    fields = parse_qs(body.decode("utf-8"), keep_blank_values=True)
    values = fields.get("payload") or []
    if len(values) != 1:
        raise ApplicationError("payload: one form field `payload` (JSON) is required", status=400)
    payload = parse_json(values[0], "payload", max_bytes=MAX_BODY_BYTES)
    if not isinstance(payload, dict):
        raise ApplicationError(f"payload: must be an object, not {json_type(payload)}", status=400)
    return payload


def django_user_for(slack_user_id: str) -> Any:
    """The one active Django user whose e-mail address is the Slack user's; Refused otherwise."""
    try:
        email = slack_users.email_of(slack_user_id)
    except TryAgain as error:
        raise Refused(f"Slack could not say who you are just now ({error}); try again.") from None
    if email is None:
        raise Refused("Slack gives no e-mail address for your account, so the desk cannot tell who you are.")
    users = list(get_user_model()._default_manager.filter(email__iexact=email, is_active=True)[:2])
    if len(users) != 1:
        what = "no active account" if not users else "more than one account"
        raise Refused(
            f"The approval desk has {what} with your e-mail address ({email}); nothing was decided."
        )
    return users[0]


def _values(view: dict[str, Any], block: str) -> str:
    values = _object(_object(view.get("state")).get("values"))
    value = _object(_object(values.get(block)).get(VALUE_ACTION)).get("value")
    return value if isinstance(value, str) else ""


def _ephemeral(payload: dict[str, Any], text: str) -> None:
    """Tell the person who clicked, and them alone (when the click came from a channel's message)."""
    channel = _object(payload.get("channel")).get("id") or _object(payload.get("container")).get("channel_id")
    user = _object(payload.get("user")).get("id")
    if not isinstance(channel, str) or not isinstance(user, str):
        return
    try:
        slack_call("chat.postEphemeral", channel=channel, user=user, text=text)
    except (SlackApiError, TryAgain) as error:
        logger.warning("Slack: could not tell %s: %s (%s)", user, text, error)


def block_action(payload: dict[str, Any]) -> HttpResponse:
    """A button: Approve decides; Edit and Reject open their modal (when the person may decide)."""
    actions = payload.get("actions")
    action = actions[0] if isinstance(actions, list) and actions and isinstance(actions[0], dict) else {}
    action_id = action.get("action_id")
    if action_id not in (APPROVE, EDIT, REJECT):
        logger.warning("Slack: unknown action %r refused", action_id)
        return _error(
            400, "unknown_action", f"action_id: {str(action_id)[:100]!r} is not an action of this desk"
        )
    call_id = _text(action.get("value"), "actions[0].value")
    slack_user_id = _text(_object(payload.get("user")).get("id"), "user.id")
    decision = DECISION_OF[action_id]
    try:
        user = django_user_for(slack_user_id)
        if action_id == APPROVE:
            approval_decide(call_id=call_id, user=user, decision=decision, channel=DecisionChannel.SLACK)
            logger.info("Slack: %s approved %s", user.get_username(), call_id)
            return HttpResponse(status=200)
        request = approval_decidable_get(call_id=call_id, user=user, decision=decision)
        trigger_id = _text(payload.get("trigger_id"), "trigger_id")
        modal = edit_modal(request) if action_id == EDIT else reject_modal(request)
        slack_call("views.open", trigger_id=trigger_id, view=modal)
    except (Refused, ApplicationError) as error:
        message = error.message if isinstance(error, ApplicationError) else str(error)
        if isinstance(error, ApplicationError) and error.status == 400:
            raise
        logger.warning("Slack: %s by %s on %s refused: %s", action_id, slack_user_id, call_id, message)
        _ephemeral(payload, f"{call_id}: {message}")
    except (SlackApiError, TryAgain) as error:
        logger.warning("Slack: could not open the %s modal for %s: %s", action_id, call_id, error)
        _ephemeral(payload, f"{call_id}: Slack did not open the form ({error}); try again.")
    return HttpResponse(status=200)


def view_submission(payload: dict[str, Any]) -> HttpResponse:
    """The Edit modal (the arguments as JSON, checked against the tool's schema) or the Reject modal."""
    view = _object(payload.get("view"))
    callback_id = view.get("callback_id")
    if callback_id not in (EDIT_MODAL, REJECT_MODAL):
        logger.warning("Slack: unknown modal %r refused", callback_id)
        return _error(
            400, "unknown_action", f"view.callback_id: {str(callback_id)[:100]!r} is not a form of this desk"
        )
    call_id = _text(view.get("private_metadata"), "view.private_metadata")
    slack_user_id = _text(_object(payload.get("user")).get("id"), "user.id")
    field = ARGUMENTS_BLOCK if callback_id == EDIT_MODAL else COMMENT_BLOCK
    comment = _values(view, COMMENT_BLOCK)
    try:
        user = django_user_for(slack_user_id)
        modified_args = None
        if callback_id == EDIT_MODAL:
            modified_args = parse_json(_values(view, ARGUMENTS_BLOCK), "modified_args")
            if not isinstance(modified_args, dict):
                raise ApplicationError(f"modified_args: must be an object, not {json_type(modified_args)}")
        approval_decide(
            call_id=call_id,
            user=user,
            decision=DECISION_OF[callback_id],
            modified_args=modified_args,
            comment=comment,
            channel=DecisionChannel.SLACK,
        )
    except (Refused, ApplicationError) as error:
        message = error.message if isinstance(error, ApplicationError) else str(error)
        logger.warning("Slack: %s by %s on %s refused: %s", callback_id, slack_user_id, call_id, message)
        return JsonResponse({"response_action": "errors", "errors": {field: message[:2000]}})
    logger.info("Slack: %s decided %s (%s)", user.get_username(), call_id, DECISION_OF[callback_id])
    return HttpResponse(status=200)


@csrf_exempt
async def slack_interactions(request: HttpRequest) -> HttpResponse:
    """Slack's interactivity request URL."""
    if request.method != "POST":
        return _error(405, "method_not_allowed", f"{request.method} is not allowed; Slack POSTs here")
    config = notify_settings()
    if not (config.slack_signing_secret and config.slack_bot_token):
        return _error(
            404, "not_found", "Slack is not configured here (SLACK_SIGNING_SECRET, SLACK_BOT_TOKEN)"
        )
    body = request.body
    if len(body) > MAX_BODY_BYTES:
        return _error(413, "too_large", f"the body has {len(body)} bytes; at most {MAX_BODY_BYTES}")
    timestamp = request.headers.get("X-Slack-Request-Timestamp", "")
    signature = request.headers.get("X-Slack-Signature", "")
    if not _signed(config.slack_signing_secret, body, timestamp, signature):
        logger.warning("Slack: an interaction with a missing, wrong or stale signature refused")
        return _error(
            401, "invalid_signature", "the request is not signed by Slack, or is older than 5 minutes"
        )
    try:
        payload = _payload(body)
        kind = payload.get("type")
        if kind == "block_actions":
            return await off_shared_thread(block_action)(payload)
        if kind == "view_submission":
            return await off_shared_thread(view_submission)(payload)
        if kind == "view_closed":
            return HttpResponse(status=200)
    except ApplicationError as error:
        logger.warning("Slack: a malformed interaction refused: %s", error.message)
        return _error(error.status, error.code, error.message)
    logger.warning("Slack: an interaction of unknown type %r refused", kind)
    return _error(400, "unknown_action", f"type: {str(kind)[:100]!r} is not an interaction this desk handles")


def _signed(secret: str, body: bytes, timestamp: str, signature: str) -> bool:
    if not timestamp.isdigit() or len(timestamp) > 12 or not signature:
        return False
    return SignatureVerifier(secret).is_valid(body=body, timestamp=timestamp, signature=signature)


# The operator's own notification preferences (linked from /hitl/)

PREFERENCE_PERMISSION = "notify.change_notificationpreference"


@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def preferences_page(request: HttpRequest) -> HttpResponse:
    """Which channels (e-mail, Slack) and which tools the signed-in operator hears about."""
    if not request.user.has_perm(PREFERENCE_PERMISSION):
        return forbidden(request, page="Notification settings", role="operator")
    user = request.user
    assert user.is_authenticated and user.pk is not None  # login_required
    preference = NotificationPreference.objects.filter(user_id=user.pk).first()
    values = {
        "email": preference.email if preference else True,
        "slack": preference.slack if preference else True,
        "tools": "\n".join(preference.tools) if preference else "",
    }
    error = ""
    status = 200
    if request.method == "POST":
        try:
            check_form_encoding(request.body)
            tools_text = request.POST.get("tools", "")
            tools = [t.strip() for t in tools_text.replace(",", "\n").splitlines() if t.strip()]
            for tool in tools:
                check_text(tool, "tools", max_length=255)
            preference_save(
                user_id=user.pk,
                email=request.POST.get("email") == "on",
                slack=request.POST.get("slack") == "on",
                tools=tools,
            )
        except ApplicationError as refused:
            error, status = refused.message, 400
            values = {**values, "tools": request.POST.get("tools", "")}
        else:
            messages.success(request, "Saved: your notification settings.")
            return HttpResponseRedirect(reverse("notify-preferences"))
    context = {
        "values": values,
        "error": error,
        "nav": "preferences",
        "slack_on": bool(notify_settings().slack_bot_token),
        "has_email": bool(user.email),
    }
    return TemplateResponse(request, "notify/preferences.html", context, status=status)
