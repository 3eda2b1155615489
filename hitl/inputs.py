"""The input layer of the approval services: what a request and a decision may be, checked the same way
by every surface (REST, the page's form and its JSON, the WebSocket's decide frame, the admin's form).

Strict: what the client sent, or a 400 naming the field (`core.json_input` for depth, NUL, lone
surrogates and sizes). DRF's own fields coerce (5 becomes "5", true becomes 1.0, "5" becomes 5.0) and
trim the spaces around an id; nothing here does.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from typing import Any

from django.core.validators import RegexValidator
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.errors import ApplicationError, error_body
from core.json_input import check_object, shown_value

from .conf import hitl_settings
from .models import OnExpire

MAX_TEXT = 10_000
MAX_ID = 2**63 - 1  # a BIGINT
DECISIONS = ["APPROVE", "EDIT", "REJECT"]


class StrictCharField(serializers.CharField):
    """A string as sent: never a number made text, never trimmed (NUL and lone surrogates are refused by
    DRF's validators, and before that by the strict parser)."""

    default_error_messages = {"invalid": "Must be a string, not {kind}."}

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid", kind=shown_value(data))
        return str(super().to_internal_value(data))


class EventIdField(StrictCharField):
    """An event id as the events API takes one: a UUID, as a string, kept in its canonical form."""

    default_error_messages = {"not_an_id": "Must be an event id (a UUID), not {input}."}

    def to_internal_value(self, data: Any) -> str:
        text = super().to_internal_value(data)
        try:
            return str(uuid.UUID(text))
        except ValueError:
            self.fail("not_an_id", input=shown_value(data))


class StrictChoiceField(serializers.ChoiceField):
    """One of the choices, exactly as written; the error lists them."""

    default_error_messages = {"invalid_choice": "Must be one of {allowed}; not {input}."}

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, str) or data not in self.choice_strings_to_values:
            self.fail(
                "invalid_choice", allowed=", ".join(self.choice_strings_to_values), input=shown_value(data)
            )
        return self.choice_strings_to_values[data]


class StrictNumberField(serializers.FloatField):
    """A JSON number (not a boolean, not a string of digits), finite."""

    default_error_messages = {"invalid": "Must be a number, not {kind}."}

    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("invalid", kind=shown_value(data))
        try:
            value = float(data)
        except OverflowError:
            self.fail("max_value", max_value=f"{MAX_ID:g}")
        if not math.isfinite(value):
            self.fail("invalid", kind="a finite number")
        return value


class JSONObjectField(serializers.DictField):
    """A JSON object, at most HITL_MAX_ARGUMENTS_BYTES as compact JSON (the entrance's check)."""

    default_error_messages = {"not_a_dict": "Must be a JSON object, not {input_type}."}

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            self.fail("not_a_dict", input_type=shown_value(data))
        # ApplicationError (400 naming the field or the path inside it, `too_large` for the size).
        return check_object(
            data, self.field_name or "arguments", max_bytes=hitl_settings().max_arguments_bytes
        )


class ApprovalRequestIn(serializers.Serializer):
    """An agent's request for approval of one tool call."""

    session_id = StrictCharField(max_length=255, min_length=1)
    call_id = StrictCharField(
        max_length=255,
        min_length=1,
        validators=[
            RegexValidator(r"^[^/?#\s](?:[^/?#]*[^/?#\s])?$", "no /, ? or #, and no surrounding spaces")
        ],
        help_text="The agent's id of this tool call; part of URLs, so without /, ? or #.",
    )
    tool_name = StrictCharField(max_length=255, min_length=1)
    arguments = JSONObjectField(required=False, default=dict)
    reason = StrictCharField(max_length=MAX_TEXT, required=False, allow_blank=True, default="")
    agent = StrictCharField(max_length=150, required=False, allow_blank=True, default="")
    timeout_s = StrictNumberField(required=False, allow_null=True, default=None)
    on_expire = StrictChoiceField(choices=OnExpire.values, required=False, default=OnExpire.REJECT)
    correlation_id = StrictCharField(max_length=255, required=False, allow_null=True, default=None)
    causation_id = EventIdField(
        required=False,
        allow_null=True,
        default=None,
        help_text="The event_id of the agent's tool_execution_requested: the cause of the request's event.",
    )


@extend_schema_field(
    {
        "type": "object",
        "nullable": True,
        "properties": {
            "scope": {"type": "string", "enum": ["session", "agent"]},
            "ttl_s": {"type": "integer", "minimum": 1},
        },
        "required": ["scope", "ttl_s"],
    }
)
class RememberField(serializers.Field):
    """`remember`: checked by hitl.policies.remember_clean (400 naming remember.scope / remember.ttl_s)."""

    def to_internal_value(self, data: Any) -> dict[str, Any] | None:
        from .policies import remember_clean

        return remember_clean(data)

    def to_representation(self, value: Any) -> Any:
        return value


class DecisionIn(serializers.Serializer):
    """An operator's decision, whichever surface it comes through."""

    decision = StrictChoiceField(choices=DECISIONS)
    modified_args = JSONObjectField(required=False, allow_null=True, default=None)
    comment = StrictCharField(
        max_length=MAX_TEXT, required=False, allow_blank=True, allow_null=True, default=""
    )
    remember = RememberField(
        required=False,
        allow_null=True,
        default=None,
        help_text='{"scope": "session" | "agent", "ttl_s": N}: approve the same tool with the same '
        "arguments in that scope automatically for N seconds (APPROVE only).",
    )


class PolicyProbeIn(serializers.Serializer):
    """A request body as the policy sees it (POST /api/hitl/rules/evaluate/); other fields are ignored."""

    tool_name = StrictCharField(max_length=255, min_length=1)
    arguments = JSONObjectField(required=False, default=dict)
    agent = StrictCharField(max_length=150, required=False, allow_blank=True, default="")
    session_id = StrictCharField(max_length=255, required=False, allow_blank=True, default="")
    reason = StrictCharField(max_length=MAX_TEXT, required=False, allow_blank=True, default="")


class RuleIn(serializers.Serializer):
    """An approval rule (POST, PUT); the service (hitl.policies.rule_clean) checks it again, with the
    globs, the CEL condition and the groups, for every surface."""

    name = StrictCharField(max_length=150, min_length=1)
    priority = serializers.IntegerField(required=False, default=0)
    enabled = serializers.BooleanField(required=False, default=True)
    tool = StrictCharField(max_length=255, required=False, default="*")
    agent = StrictCharField(max_length=255, required=False, default="*")
    condition = StrictCharField(max_length=4096, required=False, allow_blank=True, default="")
    action = StrictChoiceField(choices=["approve", "reject", "require"])
    approvals_required = serializers.IntegerField(required=False, default=1, min_value=1)
    approver_group = StrictCharField(max_length=150, required=False, allow_null=True, default=None)
    escalate_after_s = StrictNumberField(required=False, allow_null=True, default=None)
    escalate_to_group = StrictCharField(max_length=150, required=False, allow_null=True, default=None)
    message = StrictCharField(max_length=MAX_TEXT, required=False, allow_blank=True, default="")


def validated(serializer_class: type[serializers.Serializer], payload: Any) -> dict[str, Any]:
    """`payload` through `serializer_class`: its validated data, or the project's 400 naming the fields."""
    if not isinstance(payload, Mapping):
        raise ApplicationError(
            f"the body must be a JSON object, not {shown_value(payload)}",
            code="invalid",
            extra={"errors": [{"field": "body", "message": "must be a JSON object"}]},
        )
    serializer = serializer_class(data=payload)
    if not serializer.is_valid():
        body = error_body(serializers.ValidationError(serializer.errors))
        raise ApplicationError(body["detail"], code="invalid", extra={"errors": body.get("errors", [])})
    return dict(serializer.validated_data)


def decision_input(payload: Any) -> dict[str, Any]:
    """A decision's fields (`decision`, `modified_args`, `comment`, `remember`), as every surface takes
    them."""
    data = validated(DecisionIn, payload)
    if data["comment"] is None:
        data["comment"] = ""  # null: no comment
    return data
