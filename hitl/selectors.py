"""Reads of approval requests."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.db.models import Case, IntegerField, QuerySet, Value, When

from core.errors import ApplicationError
from core.json_input import check_choice, check_text, invalid, shown_value
from events.base import format_timestamp
from events.models import StoredEvent

from .conf import tool_risk
from .models import ApprovalRequest, ApprovalStatus
from .perms import VIEW_APPROVALS

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

VIEW_PERMISSION = VIEW_APPROVALS
FILTERS = ("status", "tool_name", "agent", "session_id")
MAX_FILTER_LENGTH = 255


def approval_filters(params: Any) -> dict[str, str]:
    """The list filters a query gives (an empty value is no filter), checked as given: a `status`
    that is not one, a NUL or a lone surrogate, an overlong value are a 400 naming the parameter."""
    filters: dict[str, str] = {}
    for name in FILTERS:
        value = params.get(name)
        if value is None or value == "":
            continue
        if name == "status":
            filters[name] = check_choice(value, name, ApprovalStatus.values)
        else:
            filters[name] = check_text(value, name, max_length=MAX_FILTER_LENGTH)
            if value != value.strip():
                # An id with spaces around it is not the id: refused, as everywhere, not trimmed.
                raise invalid(name, f"{shown_value(value)} has spaces around it")
    return filters


def approval_as_dict(request: ApprovalRequest) -> dict[str, Any]:
    """An approval request as the contract's JSON."""

    def moment(value: Any) -> str | None:
        return None if value is None else format_timestamp(value)

    return {
        "call_id": request.call_id,
        "session_id": request.session_id,
        "correlation_id": request.correlation_id,
        "agent": request.agent,
        "tool_name": request.tool_name,
        "arguments": request.arguments,
        "modified_args": request.modified_args,
        "status": request.status,
        "reason": request.reason,
        "comment": request.comment,
        "decided_by": request.decided_by_username or None,
        "channel": request.channel or None,
        "created_at": moment(request.created_at),
        "decided_at": moment(request.decided_at),
        "expires_at": moment(request.expires_at),
        "on_expire": request.on_expire,
        "approvals_required": request.approvals_required,
        "approvals": list(request.approvals or []),
        "rule": request.rule or None,
        "args_sha256": request.args_sha256 or None,
        "approver_group": request.approver_group,
        "escalate_to_group": request.escalate_to_group,
        "escalated_at": moment(request.escalated_at),
        # Not stored: the tool's level as configured now (HITL_TOOL_RISK, else its schema's x-risk).
        "risk": tool_risk(request.tool_name),
    }


def approvals_visible_to(user: User | AnonymousUser) -> QuerySet[ApprovalRequest]:
    """Operators (and auditors with the view permission) see every request; an agent sees its own."""
    if user.has_perm(VIEW_PERMISSION):
        return ApprovalRequest.objects.all()
    return ApprovalRequest.objects.filter(requested_by_id=user.pk)


def approval_visible_get(*, user: User | AnonymousUser, call_id: str) -> ApprovalRequest:
    """The request `call_id` if `user` may see it (operators: all; an agent: its own); else a 404 that
    says nothing of whether it exists."""
    request = approvals_visible_to(user).filter(call_id=call_id).first()
    if request is None:
        raise ApplicationError(f"no approval request has call_id {call_id!r}", code="not_found", status=404)
    return request


def pending_first(queryset: QuerySet[ApprovalRequest]) -> QuerySet[ApprovalRequest]:
    """Pending requests first, then the rest; newest first within each."""
    return queryset.annotate(
        pending_rank=Case(
            When(status=ApprovalStatus.PENDING, then=Value(0)), default=Value(1), output_field=IntegerField()
        )
    ).order_by("pending_rank", "-created_at")


def approval_list(
    *, user: User | AnonymousUser, filters: dict[str, str], before_id: int | None, limit: int
) -> tuple[list[dict[str, Any]], int | None]:
    """A page of requests visible to `user`, newest first (keyset by id); and the id to continue before."""
    queryset = approvals_visible_to(user).filter(**{k: v for k, v in filters.items() if k in FILTERS})
    if before_id is not None:
        queryset = queryset.filter(id__lt=before_id)
    page = list(queryset.order_by("-id")[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    return [approval_as_dict(r) for r in page], (page[-1].id if more and page else None)


def pending_approvals() -> list[dict[str, Any]]:
    """Every pending request, oldest first (the approval page's snapshot)."""
    return [
        approval_as_dict(r)
        for r in ApprovalRequest.objects.filter(status=ApprovalStatus.PENDING).order_by("created_at")[:1000]
    ]


def approvals_by_call_id(*, call_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The requests with these call_ids as the contract's JSON, by call_id (missing ones left out)."""
    wanted = sorted({call_id for call_id in call_ids if call_id})
    return {r.call_id: approval_as_dict(r) for r in ApprovalRequest.objects.filter(call_id__in=wanted)}


MAX_RULE_LABELS = 50


def approval_counts() -> list[tuple[str, str, int]]:
    """(rule, status, how many) over every request: one GROUP BY that /metrics derives both the
    requests by status and the decisions by rule from."""
    from django.db.models import Count

    rows = ApprovalRequest.objects.order_by().values_list("rule", "status").annotate(n=Count("*"))
    return [(rule or "", status, int(n)) for rule, status, n in rows]


def decisions_by_rule(rows: list[tuple[str, str, int]] | None = None) -> dict[tuple[str, str], int]:
    """Decided requests by (rule, status), for /metrics. Bounded labels: a rule's name without its version,
    "standing" for every standing approval, "none" where no rule matched; past MAX_RULE_LABELS names,
    "other"."""
    counts: dict[tuple[str, str], int] = {}
    names: set[str] = set()
    for rule, status, n in approval_counts() if rows is None else rows:
        if status == ApprovalStatus.PENDING:
            continue
        if not rule:
            name = "none"
        elif rule.startswith("standing:"):
            name = "standing"
        else:
            name = rule.rsplit("@", 1)[0]
        if name not in names and len(names) >= MAX_RULE_LABELS:
            name = "other"
        names.add(name)
        counts[name, status] = counts.get((name, status), 0) + n
    return counts


HISTORY_LIMIT = 500


def approval_history(request: ApprovalRequest) -> list[dict[str, Any]]:
    """The stored events about `request`, oldest first: read through the session's index (the
    request's events carry its session), then kept by their `call_id`."""
    rows = (
        StoredEvent.objects.filter(session_id=request.session_id, event_category="hitl")
        .order_by("position")
        .values("position", "event_type", "timestamp", "data", "actor")[: HISTORY_LIMIT * 4]
    )
    history = []
    for row in rows:
        data = row["data"] if isinstance(row["data"], dict) else {}
        if data.get("call_id") != request.call_id:
            continue
        history.append(
            {
                "position": row["position"],
                "event_type": row["event_type"],
                "timestamp": row["timestamp"],
                "actor": row["actor"] or data.get("decided_by") or data.get("approved_by") or "",
                "summary": _history_summary(row["event_type"], data),
            }
        )
    return history[:HISTORY_LIMIT]


def _history_summary(event_type: str, data: dict[str, Any]) -> str:
    if event_type == "tool_approval_required":
        rule = f" (rule {data['rule']})" if data.get("rule") else ""
        return f"Asked{rule}; {data.get('approvals_required') or 1} approval(s) needed"
    if event_type == "hitl_approval_recorded":
        so_far = len(data.get("approvals") or [])
        return f"Approved by {data.get('approved_by')}: {so_far} of {data.get('approvals_required')}"
    if event_type == "tool_approval_escalated":
        return f"Escalated to {data.get('escalate_to_group')}"
    if event_type == "tool_approval_expiring":
        return f"Warned: expires at {data.get('expires_at')}"
    if event_type == "tool_approval_cancelled":
        return "Withdrawn by the agent"
    if event_type == "hitl_decision_made":
        how = "by expiry" if data.get("expired") else f"through {data.get('channel') or 'unknown'}"
        comment = f": {data['comment']}" if data.get("comment") else ""
        return f"{str(data.get('decision') or '').capitalize()} ({data.get('status')}) {how}{comment}"
    return event_type
