"""Approval policies: rules that approve or reject routine tool calls at once, or say who must decide
the rest (CONTRACT.md, "Approval policies"), and standing approvals ("approve this again for a while").

Rules are compiled once per (id, version): tool and agent globs become regular expressions, conditions
CEL programs (`common-expression-language`, Rust bindings: ~1 µs per evaluation with a shared
`cel.Context`). Each process keeps the enabled rules, in order, in memory and checks a fingerprint of the
table (count, highest id, sum of versions: every change moves one of them) once per request, so a rule
changed in any process applies to the next request everywhere.

Writes of rules and standing approvals are services like the lifecycle's: one transaction with their
stored event and audit entry (`events_record`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import math
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import rfc8785
from django.contrib.auth.models import Group
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from core.errors import ApplicationError
from core.json_input import invalid, json_type, text_problem
from events.base import BaseEvent
from events.event_types import EventCategory
from events.services import events_record

from .models import ApprovalRule, RuleAction, StandingApproval, StandingScope

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

logger = logging.getLogger("hitl.policies")

RULE_CHANGED = "hitl_rule_changed"
STANDING_CHANGED = "hitl_standing_approval_changed"
CEL_VARIABLES = frozenset({"tool_name", "arguments", "agent", "session_id", "reason"})
MAX_NAME = 150
MAX_GLOB = 255
MAX_CONDITION = 4096
MAX_MESSAGE = 10_000
MAX_APPROVALS = 100
MAX_ESCALATE_S = 365 * 24 * 3600.0
MAX_STANDING_TTL_S = 30 * 24 * 3600.0
RULE_FIELDS = (
    "name",
    "priority",
    "enabled",
    "tool",
    "agent",
    "condition",
    "action",
    "approvals_required",
    "approver_group",
    "escalate_after_s",
    "escalate_to_group",
    "message",
)
DEFAULTS: dict[str, Any] = {
    "priority": 0,
    "enabled": True,
    "tool": "*",
    "agent": "*",
    "condition": "",
    "approvals_required": 1,
    "approver_group": None,
    "escalate_after_s": None,
    "escalate_to_group": None,
    "message": "",
}
_POSITION = re.compile(r"<input>:(\d+):(\d+)")


def args_sha256(arguments: Mapping[str, Any]) -> str:
    """SHA-256 of the arguments' RFC 8785 canonical JSON; "" for arguments RFC 8785 cannot represent
    (an integer beyond 2**53): such a call never matches a standing approval."""
    try:
        return hashlib.sha256(rfc8785.dumps(arguments)).hexdigest()
    except (rfc8785.CanonicalizationError, ValueError, TypeError):
        return ""


# Checking a rule


def _text(data: Mapping[str, Any], field: str, limit: int, *, required: bool = False) -> str:
    value = data[field]
    if not isinstance(value, str):
        raise invalid(field, f"must be a string, not {json_type(value)}")
    problem = text_problem(value)
    if problem:
        raise invalid(field, problem)
    if required and not value:
        raise invalid(field, "is required")
    if len(value) > limit:
        raise invalid(field, f"has {len(value)} characters; at most {limit} are allowed")
    return value


def _glob(data: Mapping[str, Any], field: str) -> str:
    value = _text(data, field, MAX_GLOB)
    if not value:
        raise invalid(field, 'must be a glob such as "*" or "delete_*", not empty')
    return value


def _group(data: Mapping[str, Any], field: str) -> str | None:
    value = data[field]
    if value is None:
        return None
    value = _text(data, field, MAX_NAME, required=True)
    if not Group.objects.filter(name=value).exists():
        raise invalid(field, f"no group is named {value!r}")
    return value


def _int(data: Mapping[str, Any], field: str, low: int, high: int) -> int:
    value = data[field]
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(field, f"must be an integer, not {json_type(value)}")
    if not low <= value <= high:
        raise invalid(field, f"must be between {low} and {high}, not {value}")
    return value


def _cel() -> Any:
    """The CEL bindings, imported at the first condition: the package's __init__ also loads its command
    line (typer, rich, prompt_toolkit), 28 MB of every server process's memory that has no rule with a
    condition (measured; issue 15's export memory goal)."""
    import cel

    return cel


def condition_program(condition: str, field: str = "condition") -> Any:
    """The CEL program of `condition` (None when empty), or a 400 naming the field and the position."""
    if not condition.strip():
        return None
    try:
        program = _cel().compile(condition)
    except (ValueError, RuntimeError, TypeError) as error:
        text = str(error)
        found = _POSITION.search(text)
        where = f" at line {found.group(1)}, column {found.group(2)}" if found else ""
        detail = text.split("ERROR: ", 1)[-1].split("\n", 1)[0]
        raise ApplicationError(
            f"{field}: not a CEL expression{where}: {detail}",
            code="invalid",
            extra={
                "errors": [
                    {
                        "field": field,
                        "message": f"not a CEL expression{where}: {detail}",
                        **({"line": int(found.group(1)), "column": int(found.group(2))} if found else {}),
                    }
                ]
            },
        ) from None
    unknown = sorted(set(program.variables()) - CEL_VARIABLES)
    if unknown:
        raise invalid(
            field,
            f"uses {', '.join(unknown)}, which a request does not have "
            f"(it has {', '.join(sorted(CEL_VARIABLES))})",
        )
    return program


def rule_clean(data: Mapping[str, Any]) -> dict[str, Any]:
    """A rule's fields as given, checked: unknown fields, types, globs, CEL, groups and counts; else a
    400 naming the field. Fields left out take their defaults (`name` and `action` are required)."""
    if not isinstance(data, Mapping):
        raise invalid("body", f"must be a JSON object, not {json_type(data)}")
    unknown = sorted(set(data) - set(RULE_FIELDS))
    if unknown:
        raise invalid(unknown[0], "is not a field of a rule")
    for field in ("name", "action"):
        if field not in data:
            raise invalid(field, "is required")
    merged = {**DEFAULTS, **data}
    clean: dict[str, Any] = {"name": _text(merged, "name", MAX_NAME, required=True)}
    action = merged["action"]
    if not isinstance(action, str) or action not in RuleAction.values:
        raise invalid("action", f"must be one of {', '.join(RuleAction.values)}, not {action!r}")
    clean["action"] = action
    clean["priority"] = _int(merged, "priority", -(2**31), 2**31 - 1)
    if not isinstance(merged["enabled"], bool):
        raise invalid("enabled", f"must be true or false, not {json_type(merged['enabled'])}")
    clean["enabled"] = merged["enabled"]
    clean["tool"] = _glob(merged, "tool")
    clean["agent"] = _glob(merged, "agent")
    clean["condition"] = _text(merged, "condition", MAX_CONDITION)
    condition_program(clean["condition"])
    clean["approvals_required"] = _int(merged, "approvals_required", 1, MAX_APPROVALS)
    clean["approver_group"] = _group(merged, "approver_group")
    escalate = merged["escalate_after_s"]
    if escalate is not None:
        if isinstance(escalate, bool) or not isinstance(escalate, int | float) or not math.isfinite(escalate):
            raise invalid(
                "escalate_after_s", f"must be a number of seconds or null, not {json_type(escalate)}"
            )
        if not 0 < escalate <= MAX_ESCALATE_S:
            raise invalid("escalate_after_s", f"must be above 0 and at most {MAX_ESCALATE_S:g} seconds")
        escalate = float(escalate)
    clean["escalate_after_s"] = escalate
    clean["escalate_to_group"] = _group(merged, "escalate_to_group")
    if (escalate is None) != (clean["escalate_to_group"] is None):
        field = "escalate_to_group" if escalate is not None else "escalate_after_s"
        raise invalid(field, "escalate_after_s and escalate_to_group go together: give both, or neither")
    clean["message"] = _text(merged, "message", MAX_MESSAGE)
    return clean


# Writing rules


def rule_as_dict(rule: ApprovalRule) -> dict[str, Any]:
    """A rule as the API's JSON."""
    return {
        "id": rule.pk,
        **{field: getattr(rule, field) for field in RULE_FIELDS},
        "version": rule.version,
        "rule": rule.label,
        "created_at": rule.created_at.isoformat() if rule.created_at else None,
        "updated_at": rule.updated_at.isoformat() if rule.updated_at else None,
    }


def _may_change_rules(user: User | AnonymousUser | None) -> None:
    if user is None or not user.is_authenticated or not user.has_perm("hitl.change_approvalrule"):
        raise ApplicationError(
            "only operators with hitl.change_approvalrule may change approval rules",
            code="permission_denied",
            status=403,
        )


def _record_rule_change(rule: ApprovalRule, change: str, user: User | AnonymousUser | None) -> None:
    event = BaseEvent(
        RULE_CHANGED,
        EventCategory.HITL,
        data={"rule_id": rule.pk, "change": change, "version": rule.version, **rule_as_dict(rule)},
        source="hitl",
    )
    event.actor = user.get_username() if user is not None and user.is_authenticated else None
    events_record(events=[event])


def _name_taken(name: str) -> ApplicationError:
    return invalid("name", f"a rule named {name!r} exists already", code="conflict", status=409)


@transaction.atomic
def rule_create(*, data: Mapping[str, Any], user: User | AnonymousUser | None) -> ApprovalRule:
    """A new rule (version 1), audited."""
    _may_change_rules(user)
    clean = rule_clean(data)
    rule = ApprovalRule(**clean)
    try:
        with transaction.atomic():
            rule.save(force_insert=True)
    except IntegrityError:
        raise _name_taken(clean["name"]) from None
    _record_rule_change(rule, "created", user)
    return rule


def _locked(rule_id: int) -> ApprovalRule:
    rule = ApprovalRule.objects.select_for_update().filter(pk=rule_id).first()
    if rule is None:
        raise ApplicationError(f"no approval rule has id {rule_id}", code="not_found", status=404)
    return rule


@transaction.atomic
def rule_update(*, rule_id: int, data: Mapping[str, Any], user: User | AnonymousUser | None) -> ApprovalRule:
    """Replace a rule's fields (PUT: fields left out take their defaults); its version goes up by one."""
    _may_change_rules(user)
    clean = rule_clean(data)
    rule = _locked(rule_id)
    for field, value in clean.items():
        setattr(rule, field, value)
    rule.version += 1
    try:
        with transaction.atomic():
            rule.save()
    except IntegrityError:
        raise _name_taken(clean["name"]) from None
    _record_rule_change(rule, "updated", user)
    return rule


@transaction.atomic
def rule_set_enabled(*, rule_id: int, enabled: bool, user: User | AnonymousUser | None) -> ApprovalRule:
    """Enable or disable a rule (a change like any other: a new version, audited)."""
    _may_change_rules(user)
    rule = _locked(rule_id)
    rule.enabled = enabled
    rule.version += 1
    rule.save(update_fields=["enabled", "version", "updated_at"])
    _record_rule_change(rule, "enabled" if enabled else "disabled", user)
    return rule


@transaction.atomic
def rule_delete(*, rule_id: int, user: User | AnonymousUser | None) -> None:
    """Delete a rule; the audit entry keeps what it was, with version + 1 (its last change)."""
    _may_change_rules(user)
    rule = _locked(rule_id)
    rule.version += 1
    pk = rule.pk
    rule.delete()
    rule.pk = pk
    _record_rule_change(rule, "deleted", user)


# Compiled rules


def _matcher(glob: str) -> Callable[[str], bool] | None:
    """A test of a name against `glob` (None: matches everything)."""
    if glob == "*":
        return None
    if not any(c in glob for c in "*?["):
        return glob.__eq__
    pattern = re.compile(fnmatch.translate(glob))
    return lambda name: pattern.match(name) is not None


@dataclass(frozen=True)
class CompiledRule:
    """A rule ready to evaluate: its fields, its glob tests and its CEL program."""

    id: int
    version: int
    name: str
    action: str
    approvals_required: int
    approver_group: str | None
    escalate_after_s: float | None
    escalate_to_group: str | None
    message: str
    tool_match: Callable[[str], bool] | None
    agent_match: Callable[[str], bool] | None
    program: Any

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"


def compile_rule(rule: ApprovalRule) -> CompiledRule:
    """Compile one rule (a condition that no longer compiles never matches, and is logged)."""
    try:
        program = condition_program(rule.condition)
        broken = False
    except ApplicationError as error:
        logger.error("approval rule %s does not compile and never matches: %s", rule.label, error.message)
        program, broken = None, True
    return CompiledRule(
        id=rule.pk,
        version=rule.version,
        name=rule.name,
        action=rule.action,
        approvals_required=rule.approvals_required,
        approver_group=rule.approver_group,
        escalate_after_s=rule.escalate_after_s,
        escalate_to_group=rule.escalate_to_group,
        message=rule.message,
        tool_match=(lambda name: False) if broken else _matcher(rule.tool),
        agent_match=_matcher(rule.agent),
        program=program,
    )


class RuleSet:
    """The enabled rules in order, compiled once per (id, version), refreshed when the table changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fingerprint: tuple[Any, ...] | None = None
        self._rules: list[CompiledRule] = []
        self._compiled: dict[tuple[int, int], CompiledRule] = {}

    def clear(self) -> None:
        with self._lock:
            self._fingerprint, self._rules, self._compiled = None, [], {}

    def current(self) -> list[CompiledRule]:
        """The enabled rules, highest priority first (then by id)."""
        # Raw SQL: this runs on every request, and the ORM's aggregate costs ~1 ms of Python.
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT COUNT(*), MAX(id), SUM(version) FROM {ApprovalRule._meta.db_table}")
            fingerprint = tuple(cursor.fetchone() or ())
        if fingerprint == self._fingerprint:
            return self._rules
        with self._lock:
            rows = list(ApprovalRule.objects.filter(enabled=True).order_by("-priority", "id"))
            compiled = {}
            for row in rows:
                key = (row.pk, row.version)
                compiled[key] = self._compiled.get(key) or compile_rule(row)
            self._compiled = compiled
            self._rules = [compiled[(row.pk, row.version)] for row in rows]
            self._fingerprint = fingerprint
            return self._rules


rule_set = RuleSet()


@dataclass(frozen=True)
class Outcome:
    """What the policy says of a request."""

    action: str
    rule: CompiledRule | None

    @property
    def label(self) -> str:
        return self.rule.label if self.rule is not None else ""

    @property
    def approvals_required(self) -> int:
        return self.rule.approvals_required if self.rule is not None else 1

    @property
    def approver_group(self) -> str | None:
        return self.rule.approver_group if self.rule is not None else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "rule": self.label or None,
            "approvals_required": self.approvals_required,
            "approver_group": self.approver_group,
        }


DEFAULT_OUTCOME = Outcome(action=RuleAction.REQUIRE, rule=None)


def evaluate(
    rules: list[CompiledRule],
    *,
    tool_name: str,
    arguments: dict[str, Any],
    agent: str,
    session_id: str,
    reason: str,
) -> Outcome:
    """The first rule whose tool glob, agent glob and condition match decides; none: one approval by any
    operator. A condition that fails to evaluate (or is not a boolean) does not match, and is logged."""
    context = None
    for rule in rules:
        if rule.tool_match is not None and not rule.tool_match(tool_name):
            continue
        if rule.agent_match is not None and not rule.agent_match(agent):
            continue
        if rule.program is not None:
            if context is None:
                context = _cel().Context(
                    {
                        "tool_name": tool_name,
                        "arguments": arguments,
                        "agent": agent,
                        "session_id": session_id,
                        "reason": reason,
                    }
                )
            try:
                result = rule.program.execute(context)
            except Exception as error:  # the library raises KeyError, TypeError, RuntimeError...
                logger.warning("approval rule %s: condition failed, not matching: %s", rule.label, error)
                continue
            if result is not True:
                if not isinstance(result, bool):
                    logger.warning(
                        "approval rule %s: condition gave %s, not a boolean; not matching",
                        rule.label,
                        type(result).__name__,
                    )
                continue
        return Outcome(action=rule.action, rule=rule)
    return DEFAULT_OUTCOME


def policy_for(
    *, tool_name: str, arguments: dict[str, Any], agent: str, session_id: str, reason: str
) -> Outcome:
    """What the current rules say of a request."""
    return evaluate(
        rule_set.current(),
        tool_name=tool_name,
        arguments=arguments,
        agent=agent,
        session_id=session_id,
        reason=reason,
    )


def policy_dry_run(*, data: dict[str, Any]) -> dict[str, Any]:
    """`POST /api/hitl/rules/evaluate/`: what the rules would do with a request body; creates nothing
    (standing approvals belong to an agent's account and are not considered)."""
    outcome = policy_for(
        tool_name=data["tool_name"],
        arguments=data["arguments"],
        agent=data["agent"],
        session_id=data["session_id"],
        reason=data["reason"],
    )
    return outcome.as_dict()


# Standing approvals


def standing_for(
    *,
    outcome: Outcome,
    tool_name: str,
    digest: str,
    session_id: str,
    agent: str,
    requested_by_id: int | None,
    now: datetime,
) -> StandingApproval | None:
    """The standing approval that approves this request, if any.

    Only where the rules would ask people (`require`), never over a rule's approve or reject, and only
    where its author could have decided alone: one approval needed, by a group the author is in.
    """
    if outcome.action != RuleAction.REQUIRE or outcome.approvals_required != 1 or not digest:
        return None
    candidates = StandingApproval.objects.filter(
        tool_name=tool_name,
        args_sha256=digest,
        requested_by_id=requested_by_id,
        expires_at__gt=now,
        revoked_at__isnull=True,
    ).select_related("created_by")
    for standing in candidates.order_by("-created_at")[:20]:
        value = session_id if standing.scope == StandingScope.SESSION else agent
        if standing.scope_value != value:
            continue
        group = outcome.approver_group
        author = standing.created_by
        if group is not None and (author is None or not author.groups.filter(name=group).exists()):
            continue
        return standing
    return None


def remember_clean(value: Any) -> dict[str, Any] | None:
    """A decision's `remember` ({"scope": "session" | "agent", "ttl_s": N}) checked; else a 400."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise invalid("remember", f"must be an object or null, not {json_type(value)}")
    unknown = sorted(set(value) - {"scope", "ttl_s"})
    if unknown:
        raise invalid(f"remember.{unknown[0]}", "is not a field of remember")
    scope = value.get("scope")
    if not isinstance(scope, str) or scope not in StandingScope.values:
        raise invalid("remember.scope", f"must be one of {', '.join(StandingScope.values)}")
    ttl = value.get("ttl_s")
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl):
        raise invalid("remember.ttl_s", f"must be a number of seconds, not {json_type(ttl)}")
    if not 0 < ttl <= MAX_STANDING_TTL_S:
        raise invalid("remember.ttl_s", f"must be above 0 and at most {MAX_STANDING_TTL_S:g} seconds")
    return {"scope": scope, "ttl_s": float(ttl)}


def standing_as_dict(standing: StandingApproval) -> dict[str, Any]:
    """A standing approval as JSON (events, the page)."""
    return {
        "id": standing.pk,
        "rule": standing.label,
        "scope": standing.scope,
        "scope_value": standing.scope_value,
        "tool_name": standing.tool_name,
        "args_sha256": standing.args_sha256,
        "source_call_id": standing.source_call_id,
        "created_by": standing.created_by_username or None,
        "created_at": standing.created_at.isoformat(),
        "expires_at": standing.expires_at.isoformat(),
        "revoked_at": standing.revoked_at.isoformat() if standing.revoked_at else None,
        "revoked_by": standing.revoked_by_username or None,
    }


def _record_standing(standing: StandingApproval, change: str, actor: str | None) -> None:
    event = BaseEvent(
        STANDING_CHANGED,
        EventCategory.HITL,
        data={"change": change, **standing_as_dict(standing)},
        source="hitl",
    )
    event.actor = actor
    events_record(events=[event])


def standing_create(
    *,
    scope: str,
    ttl_s: float,
    tool_name: str,
    digest: str,
    session_id: str,
    agent: str,
    requested_by_id: int | None,
    source_call_id: str,
    user: User,
    now: datetime,
) -> StandingApproval:
    """Record a standing approval (called inside the decision's transaction)."""
    standing = StandingApproval.objects.create(
        scope=scope,
        scope_value=session_id if scope == StandingScope.SESSION else agent,
        requested_by_id=requested_by_id,
        tool_name=tool_name,
        args_sha256=digest,
        source_call_id=source_call_id,
        created_at=now,
        expires_at=now + timedelta(seconds=ttl_s),
        created_by=user,
        created_by_username=user.get_username(),
    )
    _record_standing(standing, "created", user.get_username())
    return standing


@transaction.atomic
def standing_revoke(*, standing_id: int, user: User | AnonymousUser | None) -> StandingApproval:
    """Revoke a standing approval (operators who decide); from now on it approves nothing."""
    if user is None or not user.is_authenticated or not user.has_perm("hitl.decide_approvalrequest"):
        raise ApplicationError(
            "only operators may revoke standing approvals", code="permission_denied", status=403
        )
    standing = StandingApproval.objects.select_for_update().filter(pk=standing_id).first()
    if standing is None:
        raise ApplicationError(f"no standing approval has id {standing_id}", code="not_found", status=404)
    if standing.revoked_at is not None:
        raise ApplicationError(
            f"standing approval {standing_id} is already revoked", code="already_revoked", status=409
        )
    standing.revoked_at = timezone.now()
    standing.revoked_by_username = user.get_username()
    standing.save(update_fields=["revoked_at", "revoked_by_username"])
    _record_standing(standing, "revoked", user.get_username())
    return standing


def standing_active(*, now: datetime | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """Standing approvals in force, newest first (the page's section)."""
    now = now or timezone.now()
    rows = StandingApproval.objects.filter(revoked_at__isnull=True, expires_at__gt=now).order_by(
        "-created_at"
    )
    return [standing_as_dict(s) for s in rows[:limit]]
