"""Events of chat sessions."""

from .base import BaseEvent, DataField
from .event_types import EventCategory, EventType

MESSAGE_ROLES = ("system", "user", "assistant", "tool")


class SessionCreatedEvent(BaseEvent):
    """A new agent session started."""

    event_type_default = EventType.SESSION_CREATED
    event_category_default = EventCategory.SESSION
    data_fields = (DataField("system_prompt", required=False, default=None),)


class MessageAddedEvent(BaseEvent):
    """A message was added to a session (its length, not its text)."""

    event_type_default = EventType.MESSAGE_ADDED
    event_category_default = EventCategory.SESSION
    data_fields = (
        DataField("role", choices=MESSAGE_ROLES),
        DataField("content_length", kind=int, required=False, default=0, minimum=0),
        DataField("agent_name", required=False, default=None),
    )
