"""The event types and categories of the contract, as string enums."""

from enum import StrEnum


class EventCategory(StrEnum):
    AGENT = "agent"
    SESSION = "session"
    TOOL = "tool"
    HITL = "hitl"
    SYSTEM = "system"
    METRICS = "metrics"


class EventType(StrEnum):
    AGENT_SWITCHED = "agent_switched"
    AGENT_PROCESSING_STARTED = "agent_processing_started"
    AGENT_PROCESSING_COMPLETED = "agent_processing_completed"
    AGENT_ERROR_OCCURRED = "agent_error_occurred"
    TOOL_EXECUTION_REQUESTED = "tool_execution_requested"
    TOOL_EXECUTION_COMPLETED = "tool_execution_completed"
    TOOL_EXECUTION_FAILED = "tool_execution_failed"
    TOOL_APPROVAL_REQUIRED = "tool_approval_required"
    HITL_DECISION_MADE = "hitl_decision_made"
    TOOL_APPROVAL_CANCELLED = "tool_approval_cancelled"
    SESSION_CREATED = "session_created"
    MESSAGE_ADDED = "message_added"
    OPERATOR_SIGNED_IN = "operator_signed_in"
    OPERATOR_SIGNED_OUT = "operator_signed_out"
    OPERATOR_SIGN_IN_FAILED = "operator_sign_in_failed"
    OPERATOR_LOCKED_OUT = "operator_locked_out"
    AUDIT_PURGED = "audit_purged"
    MODEL_CHANGED = "model_changed"


# The category each known type belongs to; an event built with a known type and no category gets this one.
DEFAULT_CATEGORY: dict[str, EventCategory] = {
    EventType.AGENT_SWITCHED: EventCategory.AGENT,
    EventType.AGENT_PROCESSING_STARTED: EventCategory.AGENT,
    EventType.AGENT_PROCESSING_COMPLETED: EventCategory.AGENT,
    EventType.AGENT_ERROR_OCCURRED: EventCategory.AGENT,
    EventType.TOOL_EXECUTION_REQUESTED: EventCategory.TOOL,
    EventType.TOOL_EXECUTION_COMPLETED: EventCategory.TOOL,
    EventType.TOOL_EXECUTION_FAILED: EventCategory.TOOL,
    EventType.TOOL_APPROVAL_REQUIRED: EventCategory.HITL,
    EventType.HITL_DECISION_MADE: EventCategory.HITL,
    EventType.TOOL_APPROVAL_CANCELLED: EventCategory.HITL,
    EventType.SESSION_CREATED: EventCategory.SESSION,
    EventType.MESSAGE_ADDED: EventCategory.SESSION,
    EventType.OPERATOR_SIGNED_IN: EventCategory.SYSTEM,
    EventType.OPERATOR_SIGNED_OUT: EventCategory.SYSTEM,
    EventType.OPERATOR_SIGN_IN_FAILED: EventCategory.SYSTEM,
    EventType.OPERATOR_LOCKED_OUT: EventCategory.SYSTEM,
    EventType.AUDIT_PURGED: EventCategory.SYSTEM,
    EventType.MODEL_CHANGED: EventCategory.SYSTEM,
}


def coerce_event_type(value: str) -> str:
    """Return the EventType member for a known value, else the plain string (more types may be added)."""
    try:
        return EventType(value)
    except ValueError:
        return str(value)


def coerce_category(value: str) -> EventCategory:
    """Return the EventCategory member for `value`, raising ValueError naming the allowed ones."""
    try:
        return EventCategory(value)
    except ValueError:
        allowed = ", ".join(c.value for c in EventCategory)
        raise ValueError(f"event_category {value!r} is not one of: {allowed}") from None


# What an event type may look like, wherever one comes in (CONTRACT.md, "The trust boundary").
EVENT_TYPE_PATTERN = r"^[a-z][a-z0-9_.]{0,99}$"

# Types only the server makes: an agent publishing one would forge a human decision, hide a pending
# request, or fake a sign-in in the audit trail. Every type of the approval lifecycle and every
# operator_* type is the server's, including those added later.
SERVER_ONLY_PREFIXES = ("operator_", "tool_approval_", "hitl_")
SERVER_ONLY_TYPES = frozenset({"model_changed", "audit_purged"})


def is_server_only(event_type: str) -> bool:
    """Whether only the server may publish events of `event_type` (compared exactly, after validation)."""
    return event_type in SERVER_ONLY_TYPES or event_type.startswith(SERVER_ONLY_PREFIXES)
