"""POST /v1/traces: OTLP/HTTP (protobuf, JSON, gzip) GenAI spans become events, stored like any other."""

import gzip
import json
import os
import uuid

import pytest
from channels.db import database_sync_to_async
from django.test import AsyncClient
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from accounts.services import api_token_issue
from events.models import StoredEvent
from events.otlp import span_event_id

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/v1/traces"
T0 = 1_767_000_000_000_000_000  # nanoseconds


@pytest.fixture
def agent_token() -> str:
    return api_token_issue(username="otel-agent", group="agents").token


def attrs(**values) -> list[KeyValue]:
    out = []
    for key, value in values.items():
        key = key.replace("__", ".")
        if isinstance(value, bool):
            any_value = AnyValue(bool_value=value)
        elif isinstance(value, int):
            any_value = AnyValue(int_value=value)
        else:
            any_value = AnyValue(string_value=str(value))
        out.append(KeyValue(key=key, value=any_value))
    return out


def span(
    trace: bytes, span_id: bytes, parent: bytes = b"", *, start_ms=0, end_ms=10, error=False, **attributes
):
    return Span(
        trace_id=trace,
        span_id=span_id,
        parent_span_id=parent,
        name=str(attributes.get("gen_ai__operation__name", "work")),
        start_time_unix_nano=T0 + start_ms * 1_000_000,
        end_time_unix_nano=T0 + end_ms * 1_000_000,
        attributes=attrs(**attributes),
        status=Status(code=Status.STATUS_CODE_ERROR, message="boom") if error else Status(),
    )


def export(*spans: Span, service="support-bot") -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource={"attributes": attrs(service__name=service)},
                scope_spans=[ScopeSpans(spans=list(spans))],
            )
        ]
    )


def agent_run(trace: bytes, conversation: str) -> ExportTraceServiceRequest:
    root, tool, failing, chat, plain = (bytes([n]) * 8 for n in (1, 2, 3, 4, 5))
    return export(
        span(
            trace,
            root,
            start_ms=0,
            end_ms=100,
            gen_ai__operation__name="invoke_agent",
            gen_ai__agent__name="planner",
            gen_ai__conversation__id=conversation,
        ),
        span(
            trace,
            tool,
            root,
            start_ms=10,
            end_ms=20,
            gen_ai__operation__name="execute_tool",
            gen_ai__tool__name="search",
            gen_ai__tool__call__id="call-9",
            gen_ai__tool__call__arguments='{"q": "refund"}',
            gen_ai__conversation__id=conversation,
        ),
        span(
            trace,
            failing,
            root,
            start_ms=30,
            end_ms=35,
            error=True,
            gen_ai__operation__name="execute_tool",
            gen_ai__tool__name="delete",
            gen_ai__conversation__id=conversation,
        ),
        span(
            trace,
            chat,
            root,
            start_ms=40,
            end_ms=90,
            gen_ai__operation__name="chat",
            gen_ai__request__model="m-1",
            gen_ai__conversation__id=conversation,
        ),
        span(trace, plain, root, start_ms=50, end_ms=60),  # not GenAI: not an event
    )


async def post(body: bytes, token: str | None, content_type="application/x-protobuf", **headers):
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return await AsyncClient().post(URL, body, content_type=content_type, headers=headers)


@database_sync_to_async
def stored(correlation_id: str) -> list[StoredEvent]:
    return list(StoredEvent.objects.filter(correlation_id=correlation_id).order_by("position"))


async def test_genai_spans_become_the_contracts_events(agent_token):
    trace = os.urandom(16)
    response = await post(agent_run(trace, "conv-1").SerializeToString(), agent_token)
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/x-protobuf"
    answer = ExportTraceServiceResponse.FromString(response.content)
    assert answer.partial_success.rejected_spans == 0
    events = await stored(trace.hex())
    assert [e.event_type for e in events] == [
        "agent_processing_started",
        "tool_execution_requested",
        "tool_execution_completed",
        "tool_execution_requested",
        "tool_execution_failed",
        "gen_ai.chat",
        "agent_processing_completed",
    ]
    by_type = {e.event_type: e for e in events}
    started = by_type["agent_processing_started"]
    assert started.data["agent_type"] == "planner" and started.causation_id is None
    assert str(started.event_id) == span_event_id(trace, bytes([1]) * 8, "start")
    completed = by_type["agent_processing_completed"]
    assert completed.data["duration_ms"] == 100 and completed.data["success"] is True
    requested = events[1]
    assert requested.data["tool_name"] == "search" and requested.data["call_id"] == "call-9"
    assert requested.data["arguments"] == {"q": "refund"}
    assert requested.causation_id == str(started.event_id)  # the event of the parent span
    assert by_type["tool_execution_failed"].data["error_message"] == "boom"
    assert by_type["gen_ai.chat"].event_category == "agent"
    assert {e.session_id for e in events} == {"conv-1"}
    assert {e.source for e in events} == {"otlp:support-bot"}
    assert {e.actor for e in events} == {"otel-agent"}


async def test_exporting_the_same_spans_again_stores_nothing_new(agent_token):
    trace = os.urandom(16)
    body = agent_run(trace, "conv-2").SerializeToString()
    assert (await post(body, agent_token)).status_code == 200
    assert (await post(body, agent_token)).status_code == 200
    assert len(await stored(trace.hex())) == 7


async def test_json_with_hex_ids_and_gzip_are_accepted(agent_token):
    trace = os.urandom(16)
    payload = json_format.MessageToDict(agent_run(trace, "conv-3"))
    for resource in payload["resourceSpans"]:
        for scope in resource["scopeSpans"]:
            for item in scope["spans"]:  # OTLP/JSON writes ids as hex, not base64
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in item:
                        item[key] = __import__("base64").b64decode(item[key]).hex()
    body = gzip.compress(json.dumps(payload).encode())
    response = await post(body, agent_token, content_type="application/json", **{"Content-Encoding": "gzip"})
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/json"
    assert response.json().get("partialSuccess", {}).get("rejectedSpans", 0) == 0
    assert len(await stored(trace.hex())) == 7


async def test_a_span_with_a_bad_id_is_refused_in_partial_success_and_the_rest_stored(agent_token):
    trace = os.urandom(16)
    good = span(trace, b"\x07" * 8, gen_ai__operation__name="execute_tool", gen_ai__tool__name="ok")
    bad = span(trace, b"\x08" * 5, gen_ai__operation__name="execute_tool", gen_ai__tool__name="bad")
    zero = span(bytes(16), b"\x09" * 8, gen_ai__operation__name="invoke_agent")
    response = await post(export(good, bad, zero).SerializeToString(), agent_token)
    assert response.status_code == 200
    answer = ExportTraceServiceResponse.FromString(response.content)
    assert answer.partial_success.rejected_spans == 2
    assert "span_id" in answer.partial_success.error_message
    assert [e.data["tool_name"] for e in await stored(trace.hex())] == ["ok", "ok"]


async def test_a_span_whose_event_is_refused_is_refused_whole(agent_token):
    trace = os.urandom(16)
    deep = "[" * 80 + "]" * 80
    spans = [
        span(
            trace,
            b"\x01" * 8,
            gen_ai__operation__name="execute_tool",
            gen_ai__tool__name="t",
            gen_ai__tool__call__arguments='{"a": ' + deep + "}",
        ),
        span(trace, b"\x02" * 8, gen_ai__operation__name="Not An Operation!"),
        span(trace, b"\x03" * 8, gen_ai__operation__name="embeddings"),
    ]
    response = await post(export(*spans).SerializeToString(), agent_token)
    assert response.status_code == 200
    assert ExportTraceServiceResponse.FromString(response.content).partial_success.rejected_spans == 2
    assert [e.event_type for e in await stored(trace.hex())] == ["gen_ai.embeddings"]


@pytest.mark.parametrize(
    "body, content_type, headers, status",
    [
        (b"\xff\xff\xff not protobuf", "application/x-protobuf", {}, 400),
        (b"{not json", "application/json", {}, 400),
        (b"[1, 2]", "application/json", {}, 400),
        (b"not gzip", "application/x-protobuf", {"Content-Encoding": "gzip"}, 400),
        (b"x", "application/x-protobuf", {"Content-Encoding": "br"}, 415),
        (b"x", "text/plain", {}, 415),
    ],
)
async def test_a_body_that_does_not_decode_is_a_4xx(agent_token, body, content_type, headers, status):
    response = await post(body, agent_token, content_type=content_type, **headers)
    assert response.status_code == status, response.content
    assert response.json()["code"]


async def test_a_gzip_bomb_is_a_413(agent_token, settings):
    settings.EVENTS_MAX_BODY_BYTES = 100_000
    body = gzip.compress(b"\x00" * 1_000_000)
    response = await post(body, agent_token, **{"Content-Encoding": "gzip"})
    assert response.status_code == 413


async def test_only_agents_may_export(agent_token):
    body = export().SerializeToString()
    assert (await post(body, None)).status_code == 401
    operator = await database_sync_to_async(api_token_issue)(
        username=f"op-{uuid.uuid4().hex[:6]}", group="operators"
    )
    assert (await post(body, operator.token)).status_code == 403
