"""/api/events/: agent runtimes publish events (POST: one, or a list of up to 1,000) onto the bus;
auditors and operators read them (GET: filtered, cursor-paginated; GET /api/events/{event_id}/: one).

Every event of a request is validated before any is published; the response (201) comes only once
the store has committed them all, with their positions in list order. Idempotent on `event_id`: a
client that got no answer (a timeout, a 503, a crash of the server) posts the same body again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from django.db import DatabaseError
from django.http import HttpRequest
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
)
from rest_framework import exceptions, status
from rest_framework.parsers import JSONParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from eventbus_project.async_views import AsyncAPIView, off_shared_thread
from eventbus_project.exceptions import ApplicationError, PayloadTooLarge

from .base import BaseEvent
from .conf import max_body_bytes
from .event_bus import event_bus
from .event_store import EventStoreError
from .event_types import EventType
from .filters import (
    PositionCursorPagination,
    StoredEventFilter,
    filter_parameters,
    filtered,
    validated_filters,
)
from .models import row_to_contract_dict
from .permissions import HasMethodPermission
from .roles import PUBLISH_EVENTS
from .selectors import stored_event_get, stored_event_rows, stored_positions
from .serializers import (
    ErrorSerializer,
    EventInSerializer,
    IngestResultSerializer,
    StoredEventOutSerializer,
    StoredEventPageSerializer,
)

logger = logging.getLogger("events")

VIEW_EVENTS = "events.view_storedevent"  # auditors and operators (events.roles)
MAX_EVENTS_PER_REQUEST = 1_000
# Events only the server itself makes: an agent publishing one would forge a human decision or a
# sign-in in the audit trail.
RESERVED_EVENT_TYPES: dict[str, str] = {
    EventType.HITL_DECISION_MADE: (
        "decisions are made through the HITL API (POST /api/hitl/requests/{call_id}/decision/), not published"
    ),
    EventType.OPERATOR_SIGNED_IN: "only the server records sign-ins",
    EventType.OPERATOR_SIGNED_OUT: "only the server records sign-outs",
    EventType.OPERATOR_SIGN_IN_FAILED: "only the server records failed sign-ins",
    EventType.AUDIT_PURGED: "only the purge command records purges",
    EventType.MODEL_CHANGED: "only the server records changes of its models",
}
JSON_CONTENT_TYPES = ("application/json",)

_ERROR_RESPONSES = {
    400: OpenApiResponse(ErrorSerializer, description="Malformed JSON or an invalid event (nothing stored)."),
    401: OpenApiResponse(ErrorSerializer, description="No token, or an unknown or revoked one."),
    403: OpenApiResponse(
        ErrorSerializer, description="Not an agent, or an event type only the server makes."
    ),
    413: OpenApiResponse(ErrorSerializer, description="The body is larger than EVENTS_MAX_BODY_BYTES."),
    415: OpenApiResponse(ErrorSerializer, description="The body is not application/json."),
    503: OpenApiResponse(
        ErrorSerializer, description="The store could not commit; post the same body again."
    ),
}


_READ_ERRORS = {
    401: OpenApiResponse(ErrorSerializer, description="Not signed in, no token, or an unknown one."),
    403: OpenApiResponse(ErrorSerializer, description="Without the events.view_storedevent permission."),
}


class EventsView(AsyncAPIView):
    """Publish events (an async view, since it waits for the store's commit), and list them."""

    permission_classes = [IsAuthenticated, HasMethodPermission]
    required_permissions = {"POST": PUBLISH_EVENTS, "GET": VIEW_EVENTS}
    parser_classes = [JSONParser]  # for the schema and OPTIONS; the body is read by `post` itself

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        # Before authenticating: refusing an oversized body costs nothing and reads none of it.
        if request.method == "POST":
            declared_length(request._request, max_body_bytes())
        super().initial(request, *args, **kwargs)

    @extend_schema(
        operation_id="events_publish",
        summary="Publish events",
        description=(
            "One event object, or a list of up to 1,000, as the contract's JSON. All are validated "
            "before any is published; they are stored and numbered in list order. Answers once they "
            "are committed. Idempotent on `event_id`: after a timeout or a 503, post the same body again."
        ),
        request=PolymorphicProxySerializer(
            component_name="EventOrEventList",
            serializers=[EventInSerializer, EventInSerializer(many=True)],
            resource_type_field_name=None,
            many=False,
        ),
        responses={201: IngestResultSerializer, **_ERROR_RESPONSES},
        examples=[
            OpenApiExample(
                "An agent switch",
                request_only=True,
                value={
                    "event_type": "agent_switched",
                    "session_id": "s-1",
                    "data": {"from_agent": "orchestrator", "to_agent": "coder", "reason": "code task"},
                },
            )
        ],
        tags=["events"],
    )
    async def post(self, request: Request) -> Response:
        """Validate, publish and wait for the commit; 201 with the positions in list order."""
        content_type = (request._request.content_type or "").lower()
        if content_type not in JSON_CONTENT_TYPES:
            raise exceptions.UnsupportedMediaType(content_type or "(none)")
        events, single = await off_shared_thread(read_events)(request._request, max_body_bytes())
        username = request.user.get_username()
        for event in events:
            # Who acted is who authenticated, whatever the event's data says.
            event.actor = username
        positions = await publish(events)
        body: dict[str, Any] = {"positions": positions, "event_ids": [event.event_id for event in events]}
        if single:
            body["position"] = positions[0]
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(
        operation_id="events_list",
        summary="List stored events",
        description=(
            "Stored events matching every filter given, in position order (oldest first), "
            "`limit` per page. Follow `next` to the end to read them all, without a gap or a duplicate; "
            "an invalid filter value is a 400 naming the parameter."
        ),
        parameters=[*filter_parameters(StoredEventFilter), *PositionCursorPagination.query_parameters()],
        responses={
            200: StoredEventPageSerializer,
            400: OpenApiResponse(ErrorSerializer, description="A filter, `limit` or `cursor` is invalid."),
            **_READ_ERRORS,
        },
        tags=["events"],
    )
    async def get(self, request: Request) -> Response:
        """A page of the stored events matching the filters."""
        return Response(await off_shared_thread(self.events_page)(request))

    def events_page(self, request: Request) -> dict[str, Any]:
        """The page as JSON: one query whatever its size (filters and cursor in the WHERE, no COUNT)."""
        filterset = validated_filters(StoredEventFilter, request.query_params)
        paginator = PositionCursorPagination()
        rows = paginator.paginate_queryset(filtered(filterset, stored_event_rows()), request, view=self) or []
        return {
            "next": paginator.get_next_link(),
            "previous": paginator.get_previous_link(),
            "results": [row_to_contract_dict(row) for row in rows],
        }


class EventDetailView(AsyncAPIView):
    """One stored event, by its event_id."""

    permission_classes = [IsAuthenticated, HasMethodPermission]
    required_permissions = {"GET": VIEW_EVENTS}

    @extend_schema(
        operation_id="events_retrieve",
        summary="A stored event",
        parameters=[
            OpenApiParameter("event_id", {"type": "string", "format": "uuid"}, OpenApiParameter.PATH)
        ],
        responses={
            200: StoredEventOutSerializer,
            404: OpenApiResponse(ErrorSerializer, description="No stored event has this event_id."),
            **_READ_ERRORS,
        },
        tags=["events"],
    )
    async def get(self, request: Request, event_id: str) -> Response:
        """The event as the contract's JSON, with its position; 404 when it is unknown or no UUID."""
        event = await off_shared_thread(stored_event_get)(event_id=event_id)
        if event is None:
            raise ApplicationError(
                f"No stored event has the event_id {event_id[:64]!r}.", code="not_found", status=404
            )
        return Response(event)


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
    body = read_body(request, limit)
    try:
        payload = json.loads(body)
    except RecursionError:
        raise exceptions.ParseError("Malformed JSON: nested too deeply.") from None
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
    events = [parse_event(index, item) for index, item in enumerate(items)]
    errors = [event for event in events if isinstance(event, dict)]
    if errors:
        raise batch_error(errors, code="invalid_event", status=400)
    valid: list[BaseEvent] = [event for event in events if isinstance(event, BaseEvent)]
    refused = [
        {"index": index, "message": f"{event.event_type}: {RESERVED_EVENT_TYPES[event.event_type]}"}
        for index, event in enumerate(valid)
        if event.event_type in RESERVED_EVENT_TYPES
    ]
    if refused:
        raise batch_error(refused, code="reserved_event_type", status=403)
    return valid, single


def parse_event(index: int, item: Any) -> BaseEvent | dict[str, Any]:
    """The event at `index`, or its error as {"index", "message"}."""
    try:
        event = BaseEvent.from_dict(item)
        check_storable(event)
    except (TypeError, ValueError, ArithmeticError, RecursionError) as error:
        return {"index": index, "message": str(error)}
    except Exception as error:
        # Bad input must not be a 500, but this is a gap in the events' validation: keep the trace.
        logger.warning("unexpected error validating events[%d]", index, exc_info=True)
        return {"index": index, "message": f"{type(error).__name__}: {error}"}
    event.position = None  # a position is the store's to give; one sent back from an export is ignored
    return event


def check_storable(event: BaseEvent) -> None:
    """Refuse text the databases cannot keep, naming the field: lone surrogates, NUL in `data`'s keys.

    BaseEvent already refuses NUL in values; these would otherwise fail only in the store's writer.
    """
    text = event.to_json()
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        if "\\u0000" not in text:
            return
    for name in ("event_type", "session_id", "correlation_id", "causation_id", "source", "version"):
        check_text(getattr(event, name), name)
    check_text(event.data, "data")


def check_text(value: Any, path: str) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{path} contains a lone surrogate, which is not valid Unicode") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in key:
                raise ValueError(
                    f"{path} has a key {key!r} with a NUL character, which the store cannot keep"
                )
            check_text(key, f"{path} key {key!r}")
            check_text(item, f"{path}[{key!r}]")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_text(item, f"{path}[{index}]")


def batch_error(errors: list[dict[str, Any]], *, code: str, status: int) -> ApplicationError:
    first = errors[0]
    message = f"events[{first['index']}]: {first['message']}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    return ApplicationError(message, code=code, status=status, extra={"errors": errors})


def json_type(value: Any) -> str:
    names = {str: "a string", int: "a number", float: "a number", bool: "a boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)


async def publish(events: list[BaseEvent]) -> list[int | None]:
    """Publish `events` in order and wait for their commit; their positions (None if not stored)."""
    publishing = asyncio.ensure_future(event_bus.publish_many(events, wait_for_handlers=True))
    # Already validated and on its way: a client that hangs up must not stop a list half-published.
    publishing.add_done_callback(_consume_outcome)
    try:
        results = await asyncio.shield(publishing)
    except (EventStoreError, DatabaseError) as error:
        logger.warning("POST /api/events/: the store could not commit %d events: %s", len(events), error)
        raise ApplicationError(
            "The event store could not commit the events; post the same body again (it is idempotent "
            "on event_id).",
            code="store_unavailable",
            status=503,
            headers={"Retry-After": "1"},
        ) from error
    positions: list[int | None] = [event.position for event in events]
    unknown = [e.event_id for e, p, ok in zip(events, positions, results, strict=True) if ok and p is None]
    if unknown:
        # A middleware replaced the event object: the store numbered the replacement.
        found = await off_shared_thread(stored_positions)(event_ids=unknown)
        positions = [
            found.get(e.event_id) if p is None else p for e, p in zip(events, positions, strict=True)
        ]
    return positions


def _consume_outcome(task: asyncio.Future[Any]) -> None:
    # When the client is gone nobody awaits the task; its failure is logged by the store already.
    if not task.cancelled():
        task.exception()
