"""/api/events/: agent runtimes publish events (POST: one, or a list of up to 1,000) onto the bus;
auditors and operators read them (GET: filtered, cursor-paginated; GET /api/events/{event_id}/: one).

Every event of a request is validated before any is published; the response (201) comes only once
the store has committed them all, with their positions in list order. Idempotent on `event_id`: a
client that got no answer (a timeout, a 503, a crash of the server) posts the same body again.
"""

from __future__ import annotations

import logging
from typing import Any

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

from accounts.permissions import HasMethodPermission
from core.async_views import AsyncAPIView, off_shared_thread
from core.errors import ApplicationError

from .conf import max_body_bytes
from .filters import (
    PositionCursorPagination,
    StoredEventFilter,
    filter_parameters,
    filtered,
    validated_filters,
)
from .ingest import declared_length, read_events
from .models import row_to_contract_dict
from .perms import PUBLISH_EVENTS, VIEW_EVENTS
from .selectors import stored_event_get, stored_event_rows
from .serializers import (
    ErrorSerializer,
    EventInSerializer,
    IngestResultSerializer,
    StoredEventOutSerializer,
    StoredEventPageSerializer,
)
from .services import events_publish

logger = logging.getLogger("events")

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
        positions = await events_publish(events=events, actor=request.user.get_username())
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
