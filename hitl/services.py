"""The approval lifecycle: request, decide, expire, cancel, and waiting for the decision.

Every surface (admin, page, REST, WebSocket, sweeper) goes through these functions. Writes are
`@transaction.atomic`: a change of a request's status, its stored event and its audit entry commit in
one transaction (events.services.events_record), or nothing happens; the event reaches the bus once it
has committed. A decision is a conditional UPDATE of a pending, unexpired row, so of any number of
simultaneous decisions exactly one wins.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.services import canonical_json
from core.errors import ApplicationError
from core.json_input import check_object, invalid, text_problem
from events.base import BaseEvent
from events.event_bus import EventBus, event_bus
from events.event_types import EventCategory, EventType
from events.services import events_record
from events.tool_events import HITLDecisionMadeEvent, ToolApprovalCancelledEvent, ToolApprovalRequiredEvent

from .conf import hitl_settings, tool_schema
from .models import ApprovalRequest, ApprovalStatus, DecisionChannel, OnExpire, RuleAction
from .perms import DECIDE_APPROVALS
from .policies import args_sha256, policy_for, remember_clean, standing_create, standing_for

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

logger = logging.getLogger("hitl")

DECISIONS = {
    "APPROVE": ApprovalStatus.APPROVED,
    "EDIT": ApprovalStatus.EDITED,
    "REJECT": ApprovalStatus.REJECTED,
}
DECIDE_PERMISSION = DECIDE_APPROVALS
APPROVAL_RECORDED = "hitl_approval_recorded"  # one approval of several needed (server-only: hitl_)
ESCALATED = "tool_approval_escalated"  # server-only: tool_approval_
MAX_TEXT = 255
# The namespace of the `tool_approval_required` event ids: one id per call_id, so the events that close
# a request (its decision, its cancellation) name it as their cause without storing or looking it up.
_REQUEST_EVENT_NAMESPACE = uuid.UUID("6f1c2d4e-8a3b-5c7d-9e0f-1a2b3c4d5e6f")


def args_digest(tool_name: str, arguments: dict[str, Any]) -> str:
    """SHA-256 of the tool name and the canonical JSON of its arguments."""
    return hashlib.sha256(f"{tool_name}\n{canonical_json(arguments)}".encode()).hexdigest()


_invalid = invalid

DEFAULT_MAX_ARGUMENTS_BYTES = 64 * 1024
DEFAULT_MAX_PENDING_PER_AGENT = 100
# With on_expire "approve", a deadline this close would approve before anyone could look.
DEFAULT_MIN_AUTO_APPROVE_S = 10.0


def _setting(name: str, default: float) -> float:
    return float(getattr(settings, name, default))


def _check_arguments(field: str, value: Any) -> dict[str, Any]:
    # The one entrance check: depth, NUL, lone surrogates, size (HITL_MAX_ARGUMENTS_BYTES).
    return check_object(
        value, field, max_bytes=int(_setting("HITL_MAX_ARGUMENTS_BYTES", DEFAULT_MAX_ARGUMENTS_BYTES))
    )


def _check_text(field: str, value: Any, *, required: bool = True, limit: int = MAX_TEXT) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise _invalid(field, f"must be a string, not {type(value).__name__}")
    if required and not value:
        raise _invalid(field, "is required")
    if len(value) > limit:
        raise _invalid(field, f"has {len(value)} characters; at most {limit} are allowed")
    problem = text_problem(value)
    if problem:
        raise _invalid(field, problem)
    return value


def validate_against_schema(tool_name: str, arguments: dict[str, Any], field: str = "modified_args") -> None:
    """Check `arguments` against the JSON Schema registered for the tool, if any; 400 naming the field."""
    schema = tool_schema(tool_name)
    if schema is None:
        return
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(arguments), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        path = ".".join(str(part) for part in first.absolute_path)
        name = f"{field}.{path}" if path else field
        raise ApplicationError(
            f"{name}: {first.message}",
            code="invalid",
            status=400,
            extra={
                "errors": [
                    {
                        "field": f"{field}.{'.'.join(str(p) for p in e.absolute_path)}".rstrip("."),
                        "message": e.message,
                    }
                    for e in errors
                ]
            },
        )


def user_may_decide(user: User | AnonymousUser | None) -> bool:
    """Operators (and superusers) decide; nobody else."""
    return bool(user is not None and user.is_authenticated and user.has_perm(DECIDE_PERMISSION))


# Request


@transaction.atomic
def approval_request(
    *,
    call_id: str,
    session_id: str,
    tool_name: str,
    arguments: dict[str, Any],
    reason: str = "",
    agent: str = "",
    correlation_id: str | None = None,
    timeout_s: float | None = None,
    on_expire: str = OnExpire.REJECT,
    requested_by: User | None = None,
    causation_id: str | None = None,
) -> tuple[ApprovalRequest, bool]:
    """Hold a tool call for approval; idempotent on `call_id`. Returns the request and whether it is new.

    `causation_id` (the agent's `tool_execution_requested` event) becomes the cause of the stored
    `tool_approval_required`, so a trace shows the request, and its decision, under the tool call.
    """
    call_id = _check_text("call_id", call_id)
    if any(c in call_id for c in "/?#") or call_id != call_id.strip():
        raise _invalid("call_id", "must not contain /, ?, # or surrounding spaces (it is part of URLs)")
    session_id = _check_text("session_id", session_id)
    tool_name = _check_text("tool_name", tool_name)
    agent = _check_text("agent", agent, required=False, limit=150)
    reason = _check_text("reason", reason, required=False, limit=10_000)
    if correlation_id is not None:
        correlation_id = _check_text("correlation_id", correlation_id) or None
    arguments = _check_arguments("arguments", arguments)
    if on_expire not in OnExpire.values:
        raise _invalid("on_expire", f"must be one of {', '.join(OnExpire.values)}")
    config = hitl_settings()
    if timeout_s is None:
        timeout_s = config.default_timeout_s
    if (
        isinstance(timeout_s, bool)
        or not isinstance(timeout_s, int | float)
        or not 0 < timeout_s <= config.max_timeout_s
    ):
        raise _invalid(
            "timeout_s", f"must be a number of seconds above 0 and at most {config.max_timeout_s:g}"
        )
    minimum_auto_approve = _setting("HITL_MIN_AUTO_APPROVE_S", DEFAULT_MIN_AUTO_APPROVE_S)
    if on_expire == OnExpire.APPROVE and timeout_s < minimum_auto_approve:
        raise _invalid(
            "timeout_s",
            f"must be at least {minimum_auto_approve:g} seconds with on_expire approve, so that "
            "someone can look before the deadline approves the call",
        )
    digest = args_digest(tool_name, arguments)
    requester_id = requested_by.pk if requested_by is not None else None

    existing = ApprovalRequest.objects.filter(call_id=call_id).first()
    if existing is not None:
        return _same_call(existing, tool_name, digest, requester_id), False
    now = timezone.now()
    request = ApprovalRequest(
        call_id=call_id,
        session_id=session_id,
        correlation_id=correlation_id,
        agent=agent,
        tool_name=tool_name,
        arguments=arguments,
        args_hash=digest,
        reason=reason,
        requested_by=requested_by,
        created_at=now,
        expires_at=now + timedelta(seconds=float(timeout_s)),
        on_expire=on_expire,
        args_sha256=args_sha256(arguments),
    )
    _apply_policy(request, now)
    if requester_id is not None and request.status == ApprovalStatus.PENDING:
        # Only a request that waits takes a place: one a rule decided at once never counts.
        _check_pending_cap(requester_id)
    try:
        with transaction.atomic():
            request.save(force_insert=True)
    except IntegrityError:
        # Another request with this call_id committed between the look-up and the insert.
        existing = ApprovalRequest.objects.filter(call_id=call_id).first()
        if existing is None:
            raise
        return _same_call(existing, tool_name, digest, requester_id), False
    event = ToolApprovalRequiredEvent(
        event_id=request_event_id(call_id),
        session_id=session_id,
        correlation_id=correlation_id,
        causation_id=causation_id,
        tool_name=tool_name,
        arguments=arguments,
        call_id=call_id,
        reason=reason,
        agent=agent or None,
        source="hitl",
        data={
            "expires_at": request.expires_at.isoformat(),
            "on_expire": on_expire,
            "rule": request.rule or None,
            "approvals_required": request.approvals_required,
            "approver_group": request.approver_group,
        },
    )
    event.actor = requested_by.get_username() if requested_by is not None else None
    if request.status == ApprovalStatus.PENDING:
        events_record(events=[event])
    else:
        # Decided by the policy: the request and its decision are stored (and audited) together.
        events_record(events=[event, _decision_event(request, _outcome_of(request))])
    return request, True


def request_event_id(call_id: str) -> str:
    """The event id of the `tool_approval_required` of `call_id` (the cause of its decision)."""
    return str(uuid.uuid5(_REQUEST_EVENT_NAMESPACE, call_id))


def _apply_policy(request: ApprovalRequest, now: datetime) -> None:
    """Let the approval policy decide `request` (not yet saved), or say who must: the first matching
    rule's approve or reject decides at once (channel "policy", decided_by null); else a standing
    approval of the same call approves it; else the rule's (or the default's) quorum applies."""
    outcome = policy_for(
        tool_name=request.tool_name,
        arguments=request.arguments,
        agent=request.agent,
        session_id=request.session_id,
        reason=request.reason,
    )
    request.rule = outcome.label
    if outcome.action in (RuleAction.APPROVE, RuleAction.REJECT):
        assert outcome.rule is not None
        request.status = (
            ApprovalStatus.APPROVED if outcome.action == RuleAction.APPROVE else ApprovalStatus.REJECTED
        )
        request.channel = DecisionChannel.POLICY
        request.decided_at = now
        request.comment = outcome.rule.message
        return
    standing = standing_for(
        outcome=outcome,
        tool_name=request.tool_name,
        digest=request.args_sha256,
        session_id=request.session_id,
        agent=request.agent,
        requested_by_id=request.requested_by_id,
        now=now,
    )
    if standing is not None:
        request.rule = standing.label
        request.status = ApprovalStatus.APPROVED
        request.channel = DecisionChannel.POLICY
        request.decided_at = now
        return
    rule = outcome.rule
    request.approvals_required = outcome.approvals_required
    request.approver_group = outcome.approver_group
    if rule is not None and rule.escalate_after_s is not None:
        request.escalate_to_group = rule.escalate_to_group
        request.escalate_at = now + timedelta(seconds=rule.escalate_after_s)


def _same_call(
    existing: ApprovalRequest, tool_name: str, digest: str, requester_id: int | None
) -> ApprovalRequest:
    # A call_id belongs to the agent that made it: another agent learns nothing of the request, not even
    # whether the tool call is the same.
    same_call = existing.tool_name == tool_name and existing.args_hash == digest
    if existing.requested_by_id != requester_id or not same_call:
        raise ApplicationError(
            "this call_id is already used for another tool call; choose a new call_id",
            code="call_id_conflict",
            status=409,
        )
    return existing


def _check_pending_cap(requester_id: int) -> None:
    """At most HITL_MAX_PENDING_PER_AGENT pending requests per agent (429 beyond)."""
    cap = int(_setting("HITL_MAX_PENDING_PER_AGENT", DEFAULT_MAX_PENDING_PER_AGENT))
    # The agent's user row, locked: two requests of one agent at once cannot both take the last place.
    get_user_model()._default_manager.select_for_update().filter(pk=requester_id).exists()
    pending = ApprovalRequest.objects.filter(requested_by_id=requester_id, status=ApprovalStatus.PENDING)
    if pending.count() >= cap:
        raise ApplicationError(
            f"this agent has {cap} pending approval requests, the most allowed "
            "(HITL_MAX_PENDING_PER_AGENT); wait for decisions or cancel some",
            code="too_many_pending",
            status=429,
            headers={"Retry-After": "5"},
        )


# Decide


def _outcome_of(request: ApprovalRequest) -> str:
    if request.status == ApprovalStatus.EXPIRED:
        return "APPROVE" if request.on_expire == OnExpire.APPROVE else "REJECT"
    return {"approved": "APPROVE", "edited": "EDIT"}.get(str(request.status), "REJECT")


def _user_groups(user: User) -> set[str]:
    return set(user.groups.values_list("name", flat=True))


def _check_eligible(request: ApprovalRequest, user: User, decision: str) -> None:
    """Only the request's approver group (and, once escalated, the escalation group) decide; the user who
    made a request never approves it."""
    if decision != "REJECT" and request.requested_by_id is not None and request.requested_by_id == user.pk:
        raise ApplicationError(
            "the user who made a request never approves it", code="permission_denied", status=403
        )
    if request.approver_group is None:
        return  # any operator (an escalation adds nobody: everyone may decide already)
    allowed = [request.approver_group]
    if request.escalated_at is not None and request.escalate_to_group:
        allowed.append(request.escalate_to_group)
    if not set(allowed) & _user_groups(user):
        raise ApplicationError(
            f"only members of {' or '.join(allowed)} may decide this request",
            code="permission_denied",
            status=403,
        )


@transaction.atomic
def approval_decide(
    *,
    call_id: str,
    user: User | AnonymousUser | None,
    decision: str,
    modified_args: dict[str, Any] | None = None,
    comment: str = "",
    channel: str = DecisionChannel.API,
    remember: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> ApprovalRequest:
    """Approve, edit or reject a pending request as `user`.

    With a quorum (`approvals_required` N > 1) an APPROVE is recorded until N distinct operators have
    approved, and the N-th decides; an EDIT is taken only as the last approval needed (it changes what
    the others approved, so it cannot stand for them); one REJECT rejects. The row is locked for the
    whole decision, so simultaneous approvals count once each and a reject beside them wins or finds the
    request decided. `remember` (APPROVE of a one-approval request) also records a standing approval.
    """
    if not user_may_decide(user):
        raise ApplicationError(
            "only operators may decide approval requests", code="permission_denied", status=403
        )
    assert user is not None and user.is_authenticated
    if decision not in DECISIONS:
        raise _invalid("decision", f"must be one of {', '.join(DECISIONS)}")
    if channel not in DecisionChannel.values or channel in (DecisionChannel.EXPIRY, DecisionChannel.POLICY):
        raise _invalid("channel", f"{channel!r} is not a channel a person decides through")
    comment = _check_text("comment", comment, required=False, limit=10_000)
    remember = remember_clean(remember)
    if remember is not None and decision != "APPROVE":
        raise _invalid("remember", f"is only for APPROVE (the same arguments again), not {decision}")
    request = ApprovalRequest.objects.select_for_update().filter(call_id=call_id).first()
    if request is None:
        raise ApplicationError(f"no approval request has call_id {call_id!r}", code="not_found", status=404)
    if decision == "EDIT":
        if modified_args is None:
            raise _invalid("modified_args", "is required to EDIT")
        modified_args = _check_arguments("modified_args", modified_args)
        validate_against_schema(request.tool_name, modified_args)
    elif modified_args is not None:
        raise _invalid("modified_args", f"is only for EDIT, not {decision}")

    now = now or timezone.now()
    _check_open(request, call_id, now)
    _check_eligible(request, user, decision)
    username = user.get_username()
    approvals = list(request.approvals or [])
    if decision != "REJECT":
        if any(a.get("user") == username for a in approvals):
            raise ApplicationError(
                f"you approved {call_id!r} already; it needs another operator's approval",
                code="already_approved",
                status=409,
            )
        approvals.append({"user": username, "decided_at": now.isoformat()})
        missing = request.approvals_required - len(approvals)
        if remember is not None and request.approvals_required != 1:
            raise _invalid("remember", "is only for requests one approval decides")
        if remember is not None and not request.args_sha256:
            raise _invalid("remember", "these arguments have no RFC 8785 form (an integer beyond 2**53)")
        if missing > 0:
            if decision == "EDIT":
                raise ApplicationError(
                    f"{call_id!r} needs {missing} more approval(s) before an edit can decide it; "
                    "approve it, or reject it",
                    code="more_approvals_needed",
                    status=409,
                )
            request.approvals = approvals
            request.save(update_fields=["approvals"])
            _publish_partial(request, username, comment)
            return request
    request.status = DECISIONS[decision]
    request.approvals = approvals
    request.modified_args = modified_args
    request.decided_by = user
    request.decided_by_username = username
    request.decided_at = now
    request.channel = channel
    request.comment = comment
    request.save(
        update_fields=[
            "status",
            "approvals",
            "modified_args",
            "decided_by",
            "decided_by_username",
            "decided_at",
            "channel",
            "comment",
        ]
    )
    events_record(events=[_decision_event(request, decision)])
    if remember is not None:
        standing_create(
            scope=remember["scope"],
            ttl_s=remember["ttl_s"],
            tool_name=request.tool_name,
            digest=request.args_sha256,
            session_id=request.session_id,
            agent=request.agent,
            requested_by_id=request.requested_by_id,
            source_call_id=request.call_id,
            user=user,
            now=now,
        )
    return request


def approval_decidable_get(
    *, call_id: str, user: User | AnonymousUser | None, decision: str
) -> ApprovalRequest:
    """The pending request `user` may decide with `decision`, or the error approval_decide would give:
    a form (Slack's Edit and Reject modals) opens only when its submission can succeed. Writes nothing."""
    if not user_may_decide(user):
        raise ApplicationError(
            "only operators may decide approval requests", code="permission_denied", status=403
        )
    assert user is not None and user.is_authenticated
    request = ApprovalRequest.objects.filter(call_id=call_id).first()
    if request is None:
        raise ApplicationError(f"no approval request has call_id {call_id!r}", code="not_found", status=404)
    _check_open(request, call_id, timezone.now())
    _check_eligible(request, user, decision)
    return request


def _check_open(request: ApprovalRequest, call_id: str, now: datetime) -> None:
    if request.status != ApprovalStatus.PENDING:
        raise ApplicationError(
            f"approval request {call_id!r} is already {request.status}"
            + (f" (by {request.decided_by_username})" if request.decided_by_username else ""),
            code="already_decided",
            status=409,
        )
    if request.expires_at <= now:
        raise ApplicationError(
            f"approval request {call_id!r} expired at {request.expires_at.isoformat()}",
            code="expired",
            status=409,
        )


def _publish_partial(request: ApprovalRequest, username: str, comment: str) -> None:
    event = BaseEvent(
        APPROVAL_RECORDED,
        EventCategory.HITL,
        session_id=request.session_id,
        correlation_id=request.correlation_id,
        data={
            "call_id": request.call_id,
            "tool_name": request.tool_name,
            "approved_by": username,
            "approvals": request.approvals,
            "approvals_required": request.approvals_required,
            "rule": request.rule or None,
            "comment": comment or None,
        },
        source="hitl",
    )
    event.actor = username
    events_record(events=[event])


def _decision_event(request: ApprovalRequest, decision: str, *, expired: bool = False) -> BaseEvent:
    event = HITLDecisionMadeEvent(
        session_id=request.session_id,
        correlation_id=request.correlation_id,
        causation_id=request_event_id(request.call_id),
        call_id=request.call_id,
        decision=decision,
        tool_name=request.tool_name,
        original_args=request.arguments,
        modified_args=request.modified_args,
        decided_by=request.decided_by_username or None,
        comment=request.comment or None,
        source="hitl",
        data={
            "channel": request.channel,
            "status": request.status,
            "expired": expired,
            "rule": request.rule or None,
            "approvals": request.approvals or [],
        },
    )
    event.actor = request.decided_by_username or None
    return event


def _publish_decision(request: ApprovalRequest, decision: str, *, expired: bool = False) -> None:
    events_record(events=[_decision_event(request, decision, expired=expired)])


# Escalate


def approval_escalate(*, now: datetime | None = None, limit: int = 500) -> int:
    """Hand pending requests whose escalation time has come to their `escalate_to_group`: each gets
    `escalated_at` and a `tool_approval_escalated` event (audited) in one transaction. Returns how many."""
    now = now or timezone.now()
    due = ApprovalRequest.objects.filter(
        status=ApprovalStatus.PENDING, escalate_at__lte=now, escalated_at__isnull=True, expires_at__gt=now
    )
    escalated = 0
    for pk in list(due.order_by("escalate_at").values_list("pk", flat=True)[:limit]):
        with transaction.atomic():
            won = ApprovalRequest.objects.filter(
                pk=pk, status=ApprovalStatus.PENDING, escalated_at__isnull=True
            ).update(escalated_at=now)
            if not won:
                continue
            request = ApprovalRequest.objects.get(pk=pk)
            event = BaseEvent(
                ESCALATED,
                EventCategory.HITL,
                session_id=request.session_id,
                correlation_id=request.correlation_id,
                data={
                    "call_id": request.call_id,
                    "tool_name": request.tool_name,
                    "escalate_to_group": request.escalate_to_group,
                    "approver_group": request.approver_group,
                    "rule": request.rule or None,
                    "escalated_at": now.isoformat(),
                },
                source="hitl",
            )
            events_record(events=[event])
            escalated += 1
    if escalated:
        logger.info("escalated %d approval requests", escalated)
    return escalated


# Expire and cancel


def approval_expire(*, now: datetime | None = None, call_id: str | None = None, limit: int = 500) -> int:
    """Give overdue pending requests their `on_expire` outcome, decided by expiry; return how many."""
    now = now or timezone.now()
    overdue = ApprovalRequest.objects.filter(status=ApprovalStatus.PENDING, expires_at__lte=now)
    if call_id is not None:
        overdue = overdue.filter(call_id=call_id)
    expired = 0
    for pk in list(overdue.order_by("expires_at").values_list("pk", flat=True)[:limit]):
        with transaction.atomic():
            won = ApprovalRequest.objects.filter(
                pk=pk, status=ApprovalStatus.PENDING, expires_at__lte=now
            ).update(status=ApprovalStatus.EXPIRED, channel=DecisionChannel.EXPIRY, decided_at=now)
            if not won:
                continue  # decided a moment ago, or another sweeper got there first
            request = ApprovalRequest.objects.get(pk=pk)
            outcome = "APPROVE" if request.on_expire == OnExpire.APPROVE else "REJECT"
            _publish_decision(request, outcome, expired=True)
            expired += 1
    if expired:
        logger.info("expired %d approval requests", expired)
    return expired


@transaction.atomic
def approval_cancel(*, call_id: str, user: User | AnonymousUser | None) -> ApprovalRequest:
    """The agent that asked withdraws a pending request (operators may too)."""
    request = ApprovalRequest.objects.filter(call_id=call_id).first()
    if request is None:
        raise ApplicationError(f"no approval request has call_id {call_id!r}", code="not_found", status=404)
    if (
        user is None
        or not user.is_authenticated
        or not (
            user_may_decide(user)
            or (request.requested_by_id is not None and request.requested_by_id == user.pk)
        )
    ):
        raise ApplicationError(
            "only the agent that asked may cancel its request", code="permission_denied", status=403
        )
    now = timezone.now()
    won = ApprovalRequest.objects.filter(pk=request.pk, status=ApprovalStatus.PENDING).update(
        status=ApprovalStatus.CANCELLED, decided_at=now
    )
    request.refresh_from_db()
    if not won:
        raise ApplicationError(
            f"approval request {call_id!r} is already {request.status}", code="already_decided", status=409
        )
    event = ToolApprovalCancelledEvent(
        session_id=request.session_id,
        correlation_id=request.correlation_id,
        causation_id=request_event_id(request.call_id),
        call_id=request.call_id,
        tool_name=request.tool_name,
        source="hitl",
    )
    event.actor = user.get_username()
    events_record(events=[event])
    return request


# Waiting


@dataclass(frozen=True)
class Decision:
    """What the agent that asked needs: the outcome and the arguments to run the tool with."""

    call_id: str
    status: str
    decision: str | None  # APPROVE, EDIT or REJECT; None while pending or when cancelled
    arguments: dict[str, Any]
    comment: str
    decided_by: str | None
    channel: str

    @property
    def approved(self) -> bool:
        """Whether the tool may run (approved, edited, or expired with on_expire=approve)."""
        return self.decision in ("APPROVE", "EDIT")

    def as_dict(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "status": self.status,
            "decision": self.decision,
            "approved": self.approved,
            "arguments": self.arguments,
            "comment": self.comment,
            "decided_by": self.decided_by,
            "channel": self.channel,
        }


def decision_of(request: ApprovalRequest) -> Decision | None:
    """The decision on a request, None while it is pending."""
    status = request.status
    if status == ApprovalStatus.PENDING:
        return None
    if status == ApprovalStatus.EXPIRED:
        outcome: str | None = "APPROVE" if request.on_expire == OnExpire.APPROVE else "REJECT"
    elif status == ApprovalStatus.CANCELLED:
        outcome = None
    else:
        outcome = {"approved": "APPROVE", "edited": "EDIT"}.get(str(status), "REJECT")
    arguments = request.modified_args if status == ApprovalStatus.EDITED else request.arguments
    return Decision(
        call_id=request.call_id,
        status=status,
        decision=outcome,
        arguments=arguments or {},
        comment=request.comment,
        decided_by=request.decided_by_username or None,
        channel=request.channel,
    )


def _decision_from_event(event: BaseEvent) -> Decision:
    data = event.data
    decision = data.get("decision")
    status = data.get("status") or {"APPROVE": "approved", "EDIT": "edited", "REJECT": "rejected"}.get(
        str(decision), ""
    )
    arguments = data.get("modified_args") if decision == "EDIT" else data.get("original_args")
    return Decision(
        call_id=str(data.get("call_id")),
        status=str(status),
        decision=decision,
        arguments=arguments or {},
        comment=data.get("comment") or "",
        decided_by=data.get("decided_by"),
        channel=str(data.get("channel") or ""),
    )


class DecisionWaiters:
    """Futures of the coroutines waiting for a decision, resolved by the bus as decisions are published."""

    def __init__(self) -> None:
        self._waiting: dict[str, set[asyncio.Future[Decision | None]]] = {}

    def subscribe(self, bus: EventBus = event_bus) -> None:
        """Listen to decisions and cancellations on `bus` (once)."""
        present = {(sub.event_type, sub.handler) for sub in bus.subscriptions}
        for event_type in (EventType.HITL_DECISION_MADE, EventType.TOOL_APPROVAL_CANCELLED):
            if (str(event_type), self._on_event) not in present:
                bus.subscribe(event_type=event_type, handler=self._on_event, priority=10)

    def __len__(self) -> int:
        return sum(len(futures) for futures in self._waiting.values())

    async def _on_event(self, event: BaseEvent) -> None:
        futures = self._waiting.pop(str(event.data.get("call_id")), None)
        if not futures:
            return
        if event.event_type == EventType.TOOL_APPROVAL_CANCELLED:
            decision: Decision | None = Decision(
                call_id=str(event.data.get("call_id")),
                status=ApprovalStatus.CANCELLED,
                decision=None,
                arguments={},
                comment="",
                decided_by=None,
                channel="",
            )
        else:
            decision = _decision_from_event(event)
        for future in futures:
            if not future.done():
                future.get_loop().call_soon_threadsafe(_resolve, future, decision)

    def add(self, call_id: str) -> asyncio.Future[Decision | None]:
        future: asyncio.Future[Decision | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(call_id, set()).add(future)
        return future

    def discard(self, call_id: str, future: asyncio.Future[Decision | None]) -> None:
        futures = self._waiting.get(call_id)
        if futures is not None:
            futures.discard(future)
            if not futures:
                self._waiting.pop(call_id, None)


def _resolve(future: asyncio.Future[Decision | None], decision: Decision | None) -> None:
    if not future.done():
        future.set_result(decision)


decision_waiters = DecisionWaiters()


def _load(call_id: str) -> tuple[Decision | None, datetime | None, bool]:
    request = ApprovalRequest.objects.filter(call_id=call_id).first()
    if request is None:
        raise ApplicationError(f"no approval request has call_id {call_id!r}", code="not_found", status=404)
    return decision_of(request), request.expires_at, True


async def await_decision(call_id: str, timeout: float | None = None) -> Decision | None:
    """The decision on `call_id` as soon as it is made (None if `timeout` runs out first).

    Woken by the bus when the decision is published, not by polling; a decision made before the
    call (the agent restarted) returns at once. When the request's expiry falls within the wait, the
    waiter expires it itself at that moment, so an overdue request never outlives its deadline.
    """
    from channels.db import database_sync_to_async

    future = decision_waiters.add(call_id)
    try:
        decision, expires_at, _ = await database_sync_to_async(_load, thread_sensitive=False)(call_id)
        if decision is not None:
            return decision
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            now = timezone.now()
            until_expiry = (expires_at - now).total_seconds() if expires_at is not None else None
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return None
            # Wake at the first of: the decision, the expiry, the caller's deadline, and a slow safety
            # re-check for decisions made in a process this one hears nothing from.
            candidates = [
                x for x in (until_expiry, remaining, hitl_settings().recheck_interval_s) if x is not None
            ]
            wait = max(0.0, min(candidates))
            try:
                return await asyncio.wait_for(asyncio.shield(future), wait)
            except TimeoutError:
                pass
            if until_expiry is not None and until_expiry <= wait:
                await database_sync_to_async(approval_expire, thread_sensitive=False)(call_id=call_id)
            decision, expires_at, _ = await database_sync_to_async(_load, thread_sensitive=False)(call_id)
            if decision is not None:
                return decision
    finally:
        decision_waiters.discard(call_id, future)


async def sweep_expired_forever() -> None:
    """The server's sweeper: every HITL_SWEEP_INTERVAL_S seconds, expire overdue requests and escalate
    due ones."""
    from channels.db import database_sync_to_async

    interval = hitl_settings().sweep_interval_s
    expire = database_sync_to_async(approval_expire, thread_sensitive=False)
    escalate = database_sync_to_async(approval_escalate, thread_sensitive=False)
    while True:
        try:
            await expire()
            await escalate()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("approval sweeper failed; trying again in %ss", interval)
        await asyncio.sleep(interval)
