"""BaseEvent: the one structure every event has, in Python, in JSON, on Redis and in the store."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from .event_types import DEFAULT_CATEGORY, EventCategory, coerce_category, coerce_event_type

EVENT_VERSION = "1.0"
DEFAULT_SOURCE = "agent_runtime"

# The top-level keys of an event as JSON, in the contract's order.
EVENT_KEYS = (
    "event_id",
    "event_type",
    "event_category",
    "timestamp",
    "session_id",
    "correlation_id",
    "causation_id",
    "data",
    "source",
    "version",
)
# Keys a stored event carries besides the event itself; from_dict accepts and ignores them.
STORED_ONLY_KEYS = frozenset({"position"})


def ensure_json_safe(value: Any, path: str = "data") -> None:
    """Raise TypeError/ValueError naming the first key of `value` that JSON cannot carry faithfully."""
    # Fast path, taken on every publish: a walk that builds no path; only when it finds something is
    # the value walked again to name where.
    if not _surely_json_safe(value, 0):
        _check_json(value, path)


_INFINITIES = (math.inf, -math.inf)


def _surely_json_safe(value: Any, depth: int) -> bool:
    """True when `value` is plain JSON the stores can keep; False when _check_json must look closer."""
    kind = type(value)
    if kind is dict:
        if depth > 200:
            return False  # let _check_json (and its recursion) speak for very deep values
        for key, item in value.items():
            if type(key) is not str or "\x00" in key or not key.isascii():
                return False
            item_kind = type(item)
            if item_kind is str:
                if "\x00" in item or not item.isascii():
                    return False
            elif item_kind is dict or item_kind is list:
                if not _surely_json_safe(item, depth + 1):
                    return False
            elif item_kind is float:
                if item != item or item in _INFINITIES:
                    return False
            elif not (item is None or item_kind is bool or item_kind is int):
                return False
        return True
    if kind is list:
        if depth > 200:
            return False
        for item in value:
            item_kind = type(item)
            if item_kind is str:
                if "\x00" in item or not item.isascii():
                    return False
            elif item_kind is dict or item_kind is list:
                if not _surely_json_safe(item, depth + 1):
                    return False
            elif item_kind is float:
                if item != item or item in _INFINITIES:
                    return False
            elif not (item is None or item_kind is bool or item_kind is int):
                return False
        return True
    return False


def _check_text(value: str, path: str) -> None:
    if "\x00" in value:
        raise ValueError(f"{path} contains a NUL character, which the store cannot keep")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise ValueError(f"{path} is not valid Unicode text (a lone surrogate?)") from None


def _check_json(value: Any, path: str) -> None:
    kind = type(value)
    if kind is str:
        _check_text(value, path)
        return
    if kind is bool or kind is int or value is None:
        return
    if kind is dict:
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"{path} has a key {key!r} of type {type(key).__name__}; JSON keys are strings"
                )
            _check_text(key, f"{path} key {key[:40]!r}")
            _check_json(item, f"{path}[{key!r}]")
        return
    if kind is list or kind is tuple:
        for index, item in enumerate(value):
            _check_json(item, f"{path}[{index}]")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path} is {value!r}, which is not valid JSON")
        return
    # Subclasses of str and int (StrEnum, IntEnum) serialise as their values.
    if isinstance(value, str):
        _check_text(value, path)
        return
    if isinstance(value, int):
        return
    if isinstance(value, Mapping):
        raise TypeError(f"{path} is a {kind.__name__}; use a plain dict so it survives JSON")
    raise TypeError(f"{path} is not JSON-serialisable: {kind.__name__} {value!r:.80}")


def format_timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with a `Z`, as the contract writes timestamps."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"


def parse_timestamp(value: datetime | str) -> datetime:
    """Accept a datetime or an ISO 8601 string; naive values are taken as UTC."""
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"timestamp {value!r} is not an ISO 8601 date-time") from None
    elif isinstance(value, datetime):
        moment = value
    else:
        raise TypeError(f"timestamp must be an ISO 8601 string or a datetime, not {type(value).__name__}")
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


MAX_TYPE_LENGTH = 100
MAX_ID_LENGTH = 255
MAX_VERSION_LENGTH = 16


def _check_length(name: str, value: str | None, limit: int) -> None:
    if value is None:
        return
    if len(value) > limit:
        raise ValueError(f"{name} is {len(value)} characters long; at most {limit} are allowed")
    _check_text(value, name)


def _optional_str(name: str, value: Any) -> str | None:
    if value is None or type(value) is str:
        return value
    if isinstance(value, str | uuid.UUID):
        return str(value)
    raise TypeError(f"{name} must be a string or null, not {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class DataField:
    """One key of a typed event's `data`: its JSON type, whether it is required, its allowed values."""

    name: str
    kind: type | tuple[type, ...] | None = str  # None: any JSON value
    required: bool = True
    default: Any = None
    nullable: bool = False
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None

    def check(self, owner: str, value: Any) -> Any:
        if value is None:
            if self.nullable or not self.required:
                return None
            raise ValueError(f"{owner}: data[{self.name!r}] must not be null")
        kind = self.kind
        if kind is not None:
            # bool is an int in Python but not a number in an event.
            is_bool = isinstance(value, bool)
            wants_bool = kind is bool or (isinstance(kind, tuple) and bool in kind)
            if not isinstance(value, kind) or (is_bool and not wants_bool):
                expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
                raise TypeError(
                    f"{owner}: data[{self.name!r}] must be {expected}, not {type(value).__name__}"
                )
        if self.choices is not None and value not in self.choices:
            allowed = ", ".join(str(c) for c in self.choices)
            raise ValueError(f"{owner}: data[{self.name!r}] is {value!r}; allowed: {allowed}")
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"{owner}: data[{self.name!r}] is {value!r}; it must be >= {self.minimum}")
        return value


class BaseEvent:
    """Base class of every event; typed subclasses turn their constructor keywords into `data`."""

    event_type_default: ClassVar[str | None] = None
    event_category_default: ClassVar[EventCategory | None] = None
    data_fields: ClassVar[tuple[DataField, ...]] = ()
    registry: ClassVar[dict[str, type[BaseEvent]]] = {}

    # Not part of the event itself: set by the store (position), by the server for who acted (actor),
    # by replay (replayed), so handlers can tell a replay from the original, and by the distributed bus
    # (remote) for an event another process published: that process stores it, this one only hears it.
    position: int | None = None
    actor: str | None = None
    replayed: bool = False
    remote: bool = False

    event_id: str
    event_type: str
    event_category: EventCategory
    timestamp: datetime
    session_id: str | None
    correlation_id: str | None
    causation_id: str | None
    data: dict[str, Any]
    source: str
    version: str

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.event_type_default is not None and "event_type_default" in cls.__dict__:
            BaseEvent.registry[str(cls.event_type_default)] = cls

    def __init__(
        self,
        event_type: str | None = None,
        event_category: str | None = None,
        *,
        session_id: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        data: Mapping[str, Any] | None = None,
        source: str | None = None,
        version: str = EVENT_VERSION,
        event_id: str | uuid.UUID | None = None,
        timestamp: datetime | str | None = None,
        **fields: Any,
    ) -> None:
        name = type(self).__name__
        if event_type is None:
            event_type = self.event_type_default
        if event_type is None or event_type == "":
            raise TypeError(f"{name} needs an event_type")
        if not isinstance(event_type, str):
            raise TypeError(f"event_type must be a string, not {type(event_type).__name__}")
        _check_length("event_type", event_type, MAX_TYPE_LENGTH)
        self.event_type = coerce_event_type(event_type)
        if event_category is None:
            event_category = self.event_category_default or DEFAULT_CATEGORY.get(self.event_type)
        if event_category is None:
            raise TypeError(
                f"{name}: event type {event_type!r} is not a known type, so it needs an event_category"
            )
        self.event_category = coerce_category(event_category)

        if event_id is None:
            self.event_id = str(uuid.uuid4())
        else:
            try:
                self.event_id = str(event_id if isinstance(event_id, uuid.UUID) else uuid.UUID(str(event_id)))
            except ValueError:
                raise ValueError(f"event_id {event_id!r} is not a UUID") from None
        self.timestamp = datetime.now(UTC) if timestamp is None else parse_timestamp(timestamp)
        self.session_id = _optional_str("session_id", session_id)
        self.correlation_id = _optional_str("correlation_id", correlation_id)
        self.causation_id = _optional_str("causation_id", causation_id)
        self.source = _optional_str("source", source) or DEFAULT_SOURCE
        if not isinstance(version, str):
            raise TypeError(f"version must be a string, not {type(version).__name__}")
        self.version = version
        for field_name in ("session_id", "correlation_id", "causation_id", "source"):
            _check_length(field_name, getattr(self, field_name), MAX_ID_LENGTH)
        _check_length("version", version, MAX_VERSION_LENGTH)

        if data is not None and not isinstance(data, Mapping):
            raise TypeError(f"data must be an object, not {type(data).__name__}")
        merged: dict[str, Any] = dict(data) if data else {}
        if fields:
            known = {f.name for f in self.data_fields}
            unknown = sorted(set(fields) - known)
            if unknown:
                raise TypeError(f"{name} got unexpected keyword argument(s): {', '.join(unknown)}")
            merged.update(fields)
        for spec in self.data_fields:
            if spec.name in merged:
                merged[spec.name] = spec.check(name, merged[spec.name])
            elif spec.required:
                raise TypeError(f"{name} is missing the required field {spec.name!r}")
            else:
                merged[spec.name] = spec.default
        self._validate(merged)
        ensure_json_safe(merged)
        self.data = merged

    def _validate(self, data: dict[str, Any]) -> None:
        """Cross-field checks of a typed event; raise ValueError naming the field."""

    # JSON

    def to_dict(self) -> dict[str, Any]:
        """The event as the contract's JSON object (plain strings, ISO timestamp with `Z`).

        A stored event (one with a `position`) carries its position too, as the contract says.
        """
        payload: dict[str, Any] = {
            "event_id": self.event_id,
            "event_type": str(self.event_type),
            "event_category": str(self.event_category),
            "timestamp": format_timestamp(self.timestamp),
            "session_id": self.session_id,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "data": self.data,
            "source": self.source,
            "version": self.version,
        }
        if self.position is not None:
            payload["position"] = self.position
        return payload

    def to_json(self) -> str:
        """The event serialised as compact JSON."""
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> BaseEvent:
        """Rebuild an event (as its typed class when the type is known) from the contract's JSON object."""
        if not isinstance(payload, Mapping):
            raise TypeError(f"an event must be a JSON object, not {type(payload).__name__}")
        unknown = sorted(set(payload) - set(EVENT_KEYS) - STORED_ONLY_KEYS)
        if unknown:
            raise ValueError(f"unknown event field(s): {', '.join(map(str, unknown))}")
        event_type = payload.get("event_type")
        if not isinstance(event_type, str) or not event_type:
            raise ValueError("event_type is required and must be a string")
        target = BaseEvent.registry.get(event_type, cls if cls is not BaseEvent else BaseEvent)
        if cls is not BaseEvent and target is not cls and not issubclass(target, cls):
            raise ValueError(f"event_type {event_type!r} is not a {cls.__name__}")
        kwargs: dict[str, Any] = {
            key: payload[key]
            for key in ("session_id", "correlation_id", "causation_id", "source", "event_id", "timestamp")
            if key in payload and payload[key] is not None
        }
        if "version" in payload:
            kwargs["version"] = payload["version"]
        data = payload.get("data")
        if data is None:
            data = {}
        if target is BaseEvent:
            event = BaseEvent(event_type, payload.get("event_category"), data=data, **kwargs)
        else:
            event = target(event_category=payload.get("event_category"), data=data, **kwargs)
        position = payload.get("position")
        if position is not None:
            if not isinstance(position, int) or isinstance(position, bool) or position < 1:
                raise ValueError(f"position must be a positive integer, not {position!r}")
            event.position = position
        return event

    @classmethod
    def from_dict_lenient(cls, payload: Mapping[str, Any]) -> BaseEvent:
        """`from_dict`, or a plain BaseEvent when the data does not fit its type's class.

        An event published as a plain BaseEvent under a known type (as the design document allows) may
        lack fields its typed class requires; once stored or sent it must still be readable as it was.
        """
        try:
            return BaseEvent.from_dict(payload)
        except (TypeError, ValueError):
            if (
                not isinstance(payload, Mapping)
                or not isinstance(payload.get("event_type"), str)
                or set(payload) - set(EVENT_KEYS) - STORED_ONLY_KEYS
            ):
                raise  # not the data's fault: no event at all, or fields no event has
            data = payload.get("data")
            if data is not None and not isinstance(data, dict):
                raise
            kwargs: dict[str, Any] = {
                key: payload[key]
                for key in ("session_id", "correlation_id", "causation_id", "source", "event_id", "timestamp")
                if payload.get(key) is not None
            }
            if "version" in payload:
                kwargs["version"] = payload["version"]
            event = BaseEvent(payload["event_type"], payload.get("event_category"), data=data or {}, **kwargs)
            position = payload.get("position")
            if isinstance(position, int) and not isinstance(position, bool) and position >= 1:
                event.position = position
            return event

    @classmethod
    def from_json(cls, text: str | bytes) -> BaseEvent:
        """Rebuild an event from its JSON text."""
        return cls.from_dict(json.loads(text))

    # Python niceties

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BaseEvent):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.event_id)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(event_id={self.event_id!r}, event_type={str(self.event_type)!r}, "
            f"session_id={self.session_id!r}, data={self.data!r})"
        )
