"""System events: operators signing in and out (and locked out), bridged from Django's and axes' signals."""

from .base import BaseEvent, DataField
from .event_types import EventCategory, EventType


class OperatorSignedInEvent(BaseEvent):
    """A person signed in (admin, approval page)."""

    event_type_default = EventType.OPERATOR_SIGNED_IN
    event_category_default = EventCategory.SYSTEM
    data_fields = (DataField("username"), DataField("ip", required=False, default=None))


class OperatorSignedOutEvent(BaseEvent):
    """A person signed out."""

    event_type_default = EventType.OPERATOR_SIGNED_OUT
    event_category_default = EventCategory.SYSTEM
    data_fields = (DataField("username"), DataField("ip", required=False, default=None))


class OperatorSignInFailedEvent(BaseEvent):
    """Someone failed to sign in; `username` is what they typed (never the password)."""

    event_type_default = EventType.OPERATOR_SIGN_IN_FAILED
    event_category_default = EventCategory.SYSTEM
    data_fields = (DataField("username"), DataField("ip", required=False, default=None))


class OperatorLockedOutEvent(BaseEvent):
    """A username was locked out after too many failed sign-ins (django-axes): recorded once per lock-out,
    not for each attempt refused while it lasts. `failures` counts the failures within the window."""

    event_type_default = EventType.OPERATOR_LOCKED_OUT
    event_category_default = EventCategory.SYSTEM
    data_fields = (
        DataField("username"),
        DataField("ip", required=False, default=None),
        DataField("failures", kind=int, minimum=0),
        DataField("locked_for_s", kind=int, minimum=0),
    )


class AuditPurgedEvent(BaseEvent):
    """Old events (and audit entries) were purged by the retention command."""

    event_type_default = EventType.AUDIT_PURGED
    event_category_default = EventCategory.SYSTEM
    data_fields = (
        DataField("before"),
        DataField("category", required=False, default=None),
        DataField("events_deleted", kind=int, minimum=0),
        DataField("audit_entries_deleted", kind=int, minimum=0),
    )


class ModelChangedEvent(BaseEvent):
    """A bridged model was created, changed or deleted (operator accounts and groups)."""

    event_type_default = EventType.MODEL_CHANGED
    event_category_default = EventCategory.SYSTEM
    data_fields = (
        DataField("model"),
        DataField("pk"),
        DataField("action", choices=("created", "updated", "deleted", "groups_changed")),
        DataField("label", required=False, default=""),
    )
