"""Events of agents: switches, processing, errors."""

from .base import BaseEvent, DataField
from .event_types import EventCategory, EventType

CONFIDENCE_LEVELS = ("high", "medium", "low")
_NUMBER = (int, float)


class AgentSwitchedEvent(BaseEvent):
    """The orchestrator handed the conversation from one agent to another."""

    event_type_default = EventType.AGENT_SWITCHED
    event_category_default = EventCategory.AGENT
    data_fields = (
        DataField("from_agent"),
        DataField("to_agent"),
        DataField("reason", required=False, default=""),
        DataField("confidence", required=False, default="high", choices=CONFIDENCE_LEVELS),
    )


class AgentProcessingStartedEvent(BaseEvent):
    """An agent started working on a message."""

    event_type_default = EventType.AGENT_PROCESSING_STARTED
    event_category_default = EventCategory.AGENT
    data_fields = (
        DataField("agent_type"),
        DataField("message", required=False, default=""),
    )


class AgentProcessingCompletedEvent(BaseEvent):
    """An agent finished working on a message, successfully or not."""

    event_type_default = EventType.AGENT_PROCESSING_COMPLETED
    event_category_default = EventCategory.AGENT
    data_fields = (
        DataField("agent_type"),
        DataField("duration_ms", kind=_NUMBER, minimum=0),
        DataField("success", kind=bool, required=False, default=True),
    )


class AgentErrorOccurredEvent(BaseEvent):
    """An agent raised an error."""

    event_type_default = EventType.AGENT_ERROR_OCCURRED
    event_category_default = EventCategory.AGENT
    data_fields = (
        DataField("agent_type"),
        DataField("error_message"),
        DataField("error_type", required=False, default="Error"),
    )
