"""OpenTelemetry ingest: `POST /v1/traces` (OTLP/HTTP, protobuf or JSON, gzip) turns GenAI spans into events.

Runtimes instrumented with the OpenTelemetry GenAI conventions already export `invoke_agent` and
`execute_tool` spans; pointing their OTLP exporter at this server makes their steps events, with no code
written against it (CONTRACT.md, "OpenTelemetry ingest"):

- `invoke_agent`: `agent_processing_started` at the span's start, `agent_processing_completed` at its end;
- `execute_tool`: `tool_execution_requested`, then `tool_execution_completed` or `tool_execution_failed`;
- any other GenAI operation: one `gen_ai.<operation>` event (category `agent`) at its end.

`correlation_id` is the trace id, `causation_id` the event of the parent span, `session_id`
`gen_ai.conversation.id` (else `session.id`), `source` `otlp:<service.name>`. Event ids are derived from
the trace and span ids, so exporting the same spans again stores nothing new. The events go through the
same entrance and the same publish service as `POST /api/events/`: refused spans are reported in
`partial_success`, the rest stored all or nothing.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.http import HttpRequest, HttpResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from rest_framework import exceptions
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request

from accounts.permissions import HasMethodPermission
from core.async_views import AsyncAPIView, off_shared_thread
from core.errors import ApplicationError, PayloadTooLarge
from core.json_input import invalid

from .base import BaseEvent, format_timestamp
from .conf import max_body_bytes
from .ingest import declared_length, read_body, validate_events
from .perms import PUBLISH_EVENTS
from .serializers import ErrorSerializer
from .services import events_publish

logger = logging.getLogger("events")

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
# Event ids of spans: the same span exported twice is the same events, so nothing is stored twice.
SPAN_NAMESPACE = uuid.UUID("5f0e8f5c-9d0b-4b8e-9a55-0c1f5e7d2a61")
_OPERATION = re.compile(r"[a-z][a-z0-9_.]{0,90}")
MAX_SERVICE_NAME = 200
MAX_TEXT = 10_000


# Decoding


def decode(body: bytes, content_type: str, content_encoding: str, limit: int) -> ExportTraceServiceRequest:
    """The export request in `body` (gunzipped within `limit` bytes); a 400/413/415 for anything else."""
    if content_encoding == "gzip":
        body = _gunzip(body, limit)
    elif content_encoding not in ("", "identity"):
        raise ApplicationError(
            f"Content-Encoding {content_encoding!r} is not supported; use gzip or none.",
            code="unsupported_encoding",
            status=415,
        )
    request = ExportTraceServiceRequest()
    if content_type == PROTOBUF:
        try:
            request.ParseFromString(body)
        except (DecodeError, RecursionError, ValueError) as error:
            raise invalid("body", f"is not an OTLP ExportTraceServiceRequest: {error}") from None
        return request
    if content_type == JSON:
        try:
            payload = json.loads(body)
        except RecursionError:
            raise invalid("body", "nests too deeply") from None
        except ValueError as error:
            raise invalid("body", f"is not JSON: {error}") from None
        if not isinstance(payload, dict):
            raise invalid("body", "must be a JSON object (an ExportTraceServiceRequest)")
        _hex_ids_to_base64(payload)
        try:
            json_format.ParseDict(payload, request, ignore_unknown_fields=True)
        except (json_format.ParseError, RecursionError, ValueError, TypeError) as error:
            raise invalid("body", f"is not an OTLP ExportTraceServiceRequest: {error}") from None
        return request
    raise ApplicationError(
        f"Content-Type {content_type or '(none)'!r} is not OTLP; use {PROTOBUF} or {JSON}.",
        code="unsupported_media_type",
        status=415,
    )


def _gunzip(body: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits=31)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as error:
        raise invalid("body", f"is not gzip: {error}") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"The body inflates to more than {limit} bytes; at most {limit} are accepted.")
    return data


def _hex_ids_to_base64(payload: dict[str, Any]) -> None:
    """OTLP/JSON writes trace and span ids as hex; protobuf's JSON mapping reads bytes as base64."""
    for resource_spans in _list(payload.get("resourceSpans", payload.get("resource_spans"))):
        for scope_spans in _list(_get(resource_spans, "scopeSpans", "scope_spans")):
            for span in _list(_get(scope_spans, "spans")):
                if not isinstance(span, dict):
                    continue
                for name in ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"):
                    if name in span:
                        span[name] = _hex_to_base64(span[name])
                for link in _list(span.get("links")):
                    if isinstance(link, dict):
                        for name in ("traceId", "spanId", "trace_id", "span_id"):
                            if name in link:
                                link[name] = _hex_to_base64(link[name])


def _hex_to_base64(value: Any) -> str:
    # An id that is not hex becomes no id at all, and its span is refused by the id check.
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    return base64.b64encode(raw).decode()


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _get(value: Any, *names: str) -> Any:
    if not isinstance(value, dict):
        return None
    for name in names:
        if name in value:
            return value[name]
    return None


# Mapping


@dataclass
class Mapped:
    """The events of the request's GenAI spans, and the spans refused with the first reason."""

    events: list[dict[str, Any]] = field(default_factory=list)
    span_of_event: list[int] = field(default_factory=list)
    rejected: set[int] = field(default_factory=set)
    first_error: str = ""

    def refuse(self, span_index: int, reason: str) -> None:
        if span_index not in self.rejected:
            self.rejected.add(span_index)
            if not self.first_error:
                self.first_error = reason


def map_spans(request: ExportTraceServiceRequest) -> Mapped:
    """Every GenAI span of `request` as events in time order; other spans are not events."""
    mapped = Mapped()
    timed: list[tuple[int, int, dict[str, Any]]] = []
    for span_index, (span, resource) in enumerate(_spans(request)):
        operation = _attribute(span.attributes, "gen_ai.operation.name")
        if not isinstance(operation, str) or not operation:
            continue
        reason = _id_problem(span)
        if reason:
            mapped.refuse(span_index, f"span {span_index}: {reason}")
            continue
        try:
            for when, event in _span_events(span, resource, operation):
                timed.append((when, span_index, event))
        except ValueError as error:
            mapped.refuse(span_index, f"span {span_index} ({span.name[:80]!r}): {error}")
    timed.sort(key=lambda item: item[0])  # stable: a span's start before its end at the same instant
    mapped.events = [event for _, _, event in timed]
    mapped.span_of_event = [span_index for _, span_index, _ in timed]
    return mapped


def _spans(request: ExportTraceServiceRequest) -> Iterator[tuple[Span, dict[str, Any]]]:
    for resource_spans in request.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield span, resource


def _id_problem(span: Span) -> str | None:
    if len(span.trace_id) != 16 or not any(span.trace_id):
        return "trace_id must be 16 bytes, not all zero"
    if len(span.span_id) != 8 or not any(span.span_id):
        return "span_id must be 8 bytes, not all zero"
    if span.parent_span_id and len(span.parent_span_id) != 8:
        return "parent_span_id must be 8 bytes or empty"
    if span.end_time_unix_nano and span.end_time_unix_nano < span.start_time_unix_nano:
        return "the span ends before it starts"
    return None


def span_event_id(trace_id: bytes, span_id: bytes, part: str) -> str:
    """The id of the event `part` ("start" or "end") of a span: the same for the same span, always."""
    return str(uuid.uuid5(SPAN_NAMESPACE, f"{trace_id.hex()}/{span_id.hex()}/{part}"))


def _span_events(span: Span, resource: dict[str, Any], operation: str) -> list[tuple[int, dict[str, Any]]]:
    attributes = {kv.key: _value(kv.value) for kv in span.attributes}
    trace = span.trace_id.hex()
    service = str(resource.get("service.name") or "unknown_service")[:MAX_SERVICE_NAME]
    session = attributes.get("gen_ai.conversation.id") or attributes.get("session.id")
    if session is None:
        session = resource.get("gen_ai.conversation.id") or resource.get("session.id")
    common = {
        "event_category": None,
        "session_id": None if session is None else str(session)[:255],
        "correlation_id": trace,
        "causation_id": (
            span_event_id(span.trace_id, span.parent_span_id, "start") if span.parent_span_id else None
        ),
        "source": f"otlp:{service}",
    }
    start_ns = span.start_time_unix_nano
    end_ns = span.end_time_unix_nano or start_ns
    duration_ms = round((end_ns - start_ns) / 1e6, 3)
    failed = span.status.code == Status.STATUS_CODE_ERROR
    error_message, error_type = _error(span, attributes)
    agent = attributes.get("gen_ai.agent.name")
    span_data = {"span_id": span.span_id.hex(), "span_name": span.name[:255]}

    def event(part: str, event_type: str, at_ns: int, data: dict[str, Any], category: str | None = None):
        body = {
            **common,
            "event_id": span_event_id(span.trace_id, span.span_id, part),
            "event_type": event_type,
            "timestamp": _timestamp(at_ns),
            "data": {**data, **span_data},
        }
        if category:
            body["event_category"] = category
        else:
            body.pop("event_category")
        return (at_ns, body)

    if operation == "invoke_agent":
        agent_type = str(agent or attributes.get("gen_ai.agent.id") or span.name or "agent")[:255]
        return [
            event("start", "agent_processing_started", start_ns, {"agent_type": agent_type}),
            event(
                "end",
                "agent_processing_completed",
                end_ns,
                {"agent_type": agent_type, "duration_ms": duration_ms, "success": not failed},
            ),
        ]
    if operation == "execute_tool":
        tool_name = attributes.get("gen_ai.tool.name") or span.name
        if not isinstance(tool_name, str) or not tool_name:
            raise ValueError("an execute_tool span needs gen_ai.tool.name")
        call_id = str(attributes.get("gen_ai.tool.call.id") or span.span_id.hex())[:255]
        requested: dict[str, Any] = {"tool_name": tool_name[:255], "call_id": call_id, "agent": agent}
        arguments = _json_object(attributes.get("gen_ai.tool.call.arguments"))
        if arguments is not None:
            requested["arguments"] = arguments
        if failed:
            finished = event(
                "end",
                "tool_execution_failed",
                end_ns,
                {
                    "tool_name": tool_name[:255],
                    "call_id": call_id,
                    "error_message": error_message or "the tool failed",
                    "error_type": error_type or "Error",
                    "duration_ms": duration_ms,
                    "agent": agent,
                },
            )
        else:
            finished = event(
                "end",
                "tool_execution_completed",
                end_ns,
                {
                    "tool_name": tool_name[:255],
                    "call_id": call_id,
                    "result": attributes.get("gen_ai.tool.call.result"),
                    "duration_ms": duration_ms,
                    "agent": agent,
                },
            )
        return [event("start", "tool_execution_requested", start_ns, requested), finished]
    name = operation.strip().lower()
    if not _OPERATION.fullmatch(name):
        raise ValueError(f"gen_ai.operation.name {operation[:80]!r} is not an operation name")
    data: dict[str, Any] = {
        "operation": name,
        "duration_ms": duration_ms,
        "success": not failed,
        "attributes": {key: value for key, value in attributes.items() if key.startswith("gen_ai.")},
    }
    if failed:
        data["error_message"] = error_message or ""
    return [event("end", f"gen_ai.{name}", end_ns, data, category="agent")]


def _error(span: Span, attributes: dict[str, Any]) -> tuple[str, str]:
    message = span.status.message
    error_type = str(attributes.get("error.type") or "")
    for span_event in span.events:
        if span_event.name == "exception":
            details = {kv.key: _value(kv.value) for kv in span_event.attributes}
            message = message or str(details.get("exception.message") or "")
            error_type = error_type or str(details.get("exception.type") or "")
    return message[:MAX_TEXT], error_type[:255]


def _json_object(value: Any) -> dict[str, Any] | None:
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):
            return {"value": value[:MAX_TEXT]}
        return parsed if isinstance(parsed, dict) else {"value": parsed}
    return None if value is None else {"value": value}


def _attribute(attributes: Any, key: str) -> Any:
    for kv in attributes:
        if kv.key == key:
            return _value(kv.value)
    return None


def _value(value: AnyValue) -> Any:
    """An OTLP AnyValue as JSON."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        number = value.double_value
        return number if number == number and number not in (float("inf"), float("-inf")) else str(number)
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return None


def _timestamp(unix_nano: int) -> str:
    return format_timestamp(datetime.fromtimestamp(unix_nano / 1e9, UTC))


# The view


def _response(content_type: str, rejected: int, message: str) -> HttpResponse:
    answer = ExportTraceServiceResponse()
    if rejected:
        answer.partial_success.CopyFrom(
            ExportTracePartialSuccess(rejected_spans=rejected, error_message=message)
        )
    if content_type == JSON:
        body = json.dumps(json_format.MessageToDict(answer)).encode()
    else:
        body = answer.SerializeToString()
    return HttpResponse(body, content_type=content_type, status=200)


def _prepare(request: HttpRequest) -> tuple[list[BaseEvent], list[int], str, int, str]:
    """In a worker thread: decode, map and validate; the events to store and what was refused."""
    content_type = (request.content_type or "").lower()
    limit = max_body_bytes()
    body = read_body(request, limit)
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    export = decode(body, content_type, encoding, limit)
    mapped = map_spans(export)
    valid, refused = validate_events(mapped.events)
    for item in refused:
        mapped.refuse(
            mapped.span_of_event[item.index], f"span {mapped.span_of_event[item.index]}: {item.message}"
        )
    # All of a span or none of it: drop the other event of a span one of whose events was refused.
    events = [event for index, event in valid if mapped.span_of_event[index] not in mapped.rejected]
    return events, sorted(mapped.rejected), mapped.first_error, len(mapped.rejected), content_type


class OtlpTracesView(AsyncAPIView):
    """`POST /v1/traces`: an OTLP/HTTP trace export from an agent runtime, stored as events."""

    permission_classes = [IsAuthenticated, HasMethodPermission]
    required_permissions = {"POST": PUBLISH_EVENTS}
    parser_classes: list[Any] = []  # the body is read and decoded by `post` itself

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        # Before authenticating: refusing an oversized body costs nothing and reads none of it.
        declared_length(request._request, max_body_bytes())
        super().initial(request, *args, **kwargs)

    @extend_schema(
        operation_id="otlp_traces_export",
        summary="Export OpenTelemetry traces (OTLP/HTTP)",
        description=(
            "An `ExportTraceServiceRequest` as `application/x-protobuf` or `application/json` (optionally "
            "gzip). GenAI spans become events; spans refused are counted in `partial_success`."
        ),
        request={PROTOBUF: bytes, JSON: dict},
        responses={
            200: OpenApiResponse(description="An ExportTraceServiceResponse, in the request's content type."),
            400: OpenApiResponse(ErrorSerializer, description="The body does not decode."),
            401: OpenApiResponse(ErrorSerializer),
            403: OpenApiResponse(ErrorSerializer),
            413: OpenApiResponse(ErrorSerializer),
            415: OpenApiResponse(ErrorSerializer),
            503: OpenApiResponse(ErrorSerializer, description="The store could not commit; export again."),
        },
        tags=["otlp"],
    )
    async def post(self, request: Request) -> HttpResponse:
        """Store the GenAI spans as events; 200 with partial_success naming what was refused."""
        events, _, first_error, rejected, content_type = await off_shared_thread(_prepare)(request._request)
        if events:
            await events_publish(events=events, actor=request.user.get_username())
        if rejected:
            logger.info("OTLP export: %d spans refused (%s)", rejected, first_error)
        return _response(content_type, rejected, first_error)

    def handle_exception(self, exc: Exception) -> Any:
        if isinstance(exc, exceptions.UnsupportedMediaType):
            exc = ApplicationError(str(exc.detail), code="unsupported_media_type", status=415)
        return super().handle_exception(exc)
