"""The input layer of publishing: bodies read within limits, events validated at the entrance.

Every surface that takes events from outside (`POST /api/events/`, OTLP's `POST /v1/traces`) validates
them here, once: the event type's spelling before anything else, the types only the server makes, the
JSON entrance (depth, NUL, lone surrogates), then the contract's structure. What passes can be stored
and published without failing later for its shape.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest
from rest_framework import exceptions

from core.errors import ApplicationError, PayloadTooLarge
from core.json_input import check_json, invalid, json_type, max_depth

from .base import BaseEvent
from .event_types import EVENT_TYPE_PATTERN, EventType, is_server_only

logger = logging.getLogger("events")

MAX_EVENTS_PER_REQUEST = 1_000
# Why some of the types only the server makes (events.event_types.is_server_only) are refused; the
# others get a general message.
RESERVED_EVENT_TYPES: dict[str, str] = {
    EventType.HITL_DECISION_MADE: (
        "decisions are made through the HITL API (POST /api/hitl/requests/{call_id}/decision/), not published"
    ),
    EventType.TOOL_APPROVAL_REQUIRED: "approval requests are made through POST /api/hitl/requests/",
    EventType.TOOL_APPROVAL_CANCELLED: (
        "requests are withdrawn through POST /api/hitl/requests/{call_id}/cancel/"
    ),
    EventType.OPERATOR_SIGNED_IN: "only the server records sign-ins",
    EventType.OPERATOR_SIGNED_OUT: "only the server records sign-outs",
    EventType.OPERATOR_SIGN_IN_FAILED: "only the server records failed sign-ins",
    EventType.AUDIT_PURGED: "only the purge command records purges",
    EventType.MODEL_CHANGED: "only the server records changes of its models",
}
_EVENT_TYPE = re.compile(EVENT_TYPE_PATTERN)


@dataclass(frozen=True)
class Refused:
    """One item that is not a valid event: its index, why, and the error code of that reason."""

    index: int
    message: str
    code: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "message": self.message}


# Bodies


def declared_length(request: HttpRequest, limit: int) -> int | None:
    """The body's Content-Length (None without one, e.g. chunked); 413 above `limit`."""
    raw = request.META.get("CONTENT_LENGTH")
    if not raw:
        return None
    try:
        length = int(raw)
    except ValueError:
        raise exceptions.ParseError(f"Content-Length {raw!r} is not a number.") from None
    if length < 0:
        raise exceptions.ParseError(f"Content-Length {raw!r} is negative.")
    if length > limit:
        raise PayloadTooLarge(f"The body has {length} bytes; at most {limit} are accepted.")
    return length


def read_body(request: HttpRequest, limit: int) -> bytes:
    """The body, at most `limit` bytes (413 beyond), read from the stream: Django's
    DATA_UPLOAD_MAX_MEMORY_SIZE, made for form posts, does not apply to this endpoint's limit."""
    length = declared_length(request, limit)
    if length is not None:
        return request.read(length) if length else b""
    # No Content-Length (a chunked body): read one byte past the limit to know it was exceeded.
    body = request.read(limit + 1)
    if len(body) > limit:
        raise PayloadTooLarge(f"The body has more than {limit} bytes; at most {limit} are accepted.")
    return body


def read_events(request: HttpRequest, limit: int) -> tuple[list[BaseEvent], bool]:
    """The request's events, all valid (or a 4xx naming each bad one), and whether the body was one."""
    return events_from_body(read_body(request, limit))


def events_from_body(body: bytes) -> tuple[list[BaseEvent], bool]:
    """The events of a JSON body, all valid (or a 4xx naming each bad one), and whether it was one."""
    try:
        payload = json.loads(body)
    except RecursionError:
        raise invalid("body", f"nests deeper than {max_depth()} levels") from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, an integer of 5,000 digits
        raise exceptions.ParseError(f"Malformed JSON: {error}") from None
    single = isinstance(payload, dict)
    items = [payload] if single else payload
    if not isinstance(items, list):
        raise ApplicationError(
            f"The body must be an event object or a list of them, not {json_type(payload)}.",
            code="invalid_body",
        )
    if not items:
        raise ApplicationError("The list holds no events.", code="invalid_body")
    if len(items) > MAX_EVENTS_PER_REQUEST:
        raise ApplicationError(
            f"At most {MAX_EVENTS_PER_REQUEST} events per request; this one has {len(items)}.",
            code="too_many_events",
        )
    events, refused = validate_events(items)
    if refused:
        # All or nothing: one bad event refuses the request. The most telling reason is reported.
        for code, status in (
            ("invalid_event_type", 400),
            ("reserved_event_type", 403),
            ("invalid_event", 400),
        ):
            same = [item.as_dict() for item in refused if item.code == code]
            if same:
                raise batch_error(same, code=code, status=status)
    return [event for _, event in events], single


# Events


def validate_events(items: list[Any]) -> tuple[list[tuple[int, BaseEvent]], list[Refused]]:
    """Each item as a valid event, or why not: (index, event) pairs and the refused items, in order."""
    valid: list[tuple[int, BaseEvent]] = []
    refused: list[Refused] = []
    for index, item in enumerate(items):
        problem = event_type_problem(item)
        if problem is not None:
            refused.append(Refused(index, problem, "invalid_event_type"))
            continue
        event_type = item.get("event_type") if isinstance(item, dict) else None
        if isinstance(event_type, str) and is_server_only(event_type):
            reason = RESERVED_EVENT_TYPES.get(event_type, "only the server makes events of this type")
            refused.append(Refused(index, f"{event_type}: {reason}", "reserved_event_type"))
            continue
        event = parse_event(index, item)
        if isinstance(event, dict):
            refused.append(Refused(index, event["message"], "invalid_event"))
        else:
            valid.append((index, event))
    return valid, refused


def event_type_problem(item: Any) -> str | None:
    """Why `item`'s event_type is not one (None when it is, or when from_dict will name what is wrong).

    Checked before anything else, and reserved types only after it, so that no look-alike spelling
    ("HITL_DECISION_MADE", "hitl_decision_made ") can pass as an ordinary type.
    """
    if not isinstance(item, dict) or "event_type" not in item:
        return None
    value = item["event_type"]
    if not isinstance(value, str):
        return f"event_type must be a string, not {json_type(value)}"
    if not _EVENT_TYPE.fullmatch(value):
        return (
            f"event_type {value[:120]!r} is not a type: lower-case letters, digits, '_' and '.', "
            "starting with a letter, at most 100 characters"
        )
    return None


def parse_event(index: int, item: Any) -> BaseEvent | dict[str, Any]:
    """The event at `index`, or its error as {"index", "message"}."""
    try:
        # The one entrance check first: depth, NUL, lone surrogates, non-finite numbers, named by path.
        check_json(item, f"events[{index}]")
    except ApplicationError as error:
        return {"index": index, "message": error.message.removeprefix(f"events[{index}]").lstrip(".: ")}
    try:
        # check_json has seen every string of the item: what from_dict keeps of it can be stored.
        event = BaseEvent.from_dict(item)
    except (TypeError, ValueError, ArithmeticError, RecursionError) as error:
        return {"index": index, "message": str(error)}
    except Exception as error:
        # Bad input must not be a 500, but this is a gap in the events' validation: keep the trace.
        logger.warning("unexpected error validating events[%d]", index, exc_info=True)
        return {"index": index, "message": f"{type(error).__name__}: {error}"}
    event.position = None  # a position is the store's to give; one sent back from an export is ignored
    return event


def batch_error(errors: list[dict[str, Any]], *, code: str, status: int) -> ApplicationError:
    first = errors[0]
    message = f"events[{first['index']}]: {first['message']}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    return ApplicationError(message, code=code, status=status, extra={"errors": errors})
