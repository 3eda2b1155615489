"""Events of tool calls and their human approval (HITL)."""

from typing import Any

from .base import BaseEvent, DataField
from .event_types import EventCategory, EventType

HITL_DECISIONS = ("APPROVE", "EDIT", "REJECT")
_NUMBER = (int, float)


class ToolExecutionRequestedEvent(BaseEvent):
    """An agent asked to run a tool."""

    event_type_default = EventType.TOOL_EXECUTION_REQUESTED
    event_category_default = EventCategory.TOOL
    data_fields = (
        DataField("tool_name"),
        DataField("arguments", kind=dict, required=False, default=None),
        DataField("call_id"),
        DataField("agent", required=False, default=None),
    )

    def _validate(self, data: dict[str, Any]) -> None:
        if data["arguments"] is None:
            data["arguments"] = {}


class ToolExecutionCompletedEvent(BaseEvent):
    """A tool call finished; `result` is whatever JSON the tool returned."""

    event_type_default = EventType.TOOL_EXECUTION_COMPLETED
    event_category_default = EventCategory.TOOL
    data_fields = (
        DataField("tool_name"),
        DataField("call_id"),
        DataField("result", kind=None, required=False, default=None),
        DataField("duration_ms", kind=_NUMBER, required=False, default=None, minimum=0),
        DataField("agent", required=False, default=None),
    )


class ToolExecutionFailedEvent(BaseEvent):
    """A tool call raised an error."""

    event_type_default = EventType.TOOL_EXECUTION_FAILED
    event_category_default = EventCategory.TOOL
    data_fields = (
        DataField("tool_name"),
        DataField("call_id"),
        DataField("error_message"),
        DataField("error_type", required=False, default="Error"),
        DataField("duration_ms", kind=_NUMBER, required=False, default=None, minimum=0),
        DataField("agent", required=False, default=None),
    )


class ToolApprovalRequiredEvent(BaseEvent):
    """A tool call is held until a human approves, edits or rejects it."""

    event_type_default = EventType.TOOL_APPROVAL_REQUIRED
    event_category_default = EventCategory.HITL
    data_fields = (
        DataField("tool_name"),
        DataField("arguments", kind=dict, required=False, default=None),
        DataField("call_id"),
        DataField("reason", required=False, default=""),
        DataField("agent", required=False, default=None),
    )

    def _validate(self, data: dict[str, Any]) -> None:
        if data["arguments"] is None:
            data["arguments"] = {}


class HITLDecisionMadeEvent(BaseEvent):
    """A human decided on a held tool call: APPROVE, EDIT (with modified_args) or REJECT."""

    event_type_default = EventType.HITL_DECISION_MADE
    event_category_default = EventCategory.HITL
    data_fields = (
        DataField("call_id"),
        DataField("decision", choices=HITL_DECISIONS),
        DataField("tool_name"),
        DataField("original_args", kind=dict, required=False, default=None),
        DataField("modified_args", kind=dict, required=False, default=None),
        DataField("decided_by", required=False, default=None),
        DataField("comment", required=False, default=None),
    )

    def _validate(self, data: dict[str, Any]) -> None:
        if data["original_args"] is None:
            data["original_args"] = {}
        if data["decision"] == "EDIT" and data["modified_args"] is None:
            raise ValueError("HITLDecisionMadeEvent: data['modified_args'] is required when decision is EDIT")


class ToolApprovalCancelledEvent(BaseEvent):
    """The agent withdrew a tool call it had asked approval for."""

    event_type_default = EventType.TOOL_APPROVAL_CANCELLED
    event_category_default = EventCategory.HITL
    data_fields = (DataField("call_id"), DataField("tool_name"))
