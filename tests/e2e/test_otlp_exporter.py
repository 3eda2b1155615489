"""An application instrumented with OpenTelemetry exports GenAI spans with the real OTLP/HTTP exporter to
a running server, and they become events (no code written against this server)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Status, StatusCode

from tests.e2e.conftest import LiveServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(Path(tmp_path_factory.mktemp("otlp")))
    live.start()
    try:
        yield live
    finally:
        live.stop()


def test_the_otlp_http_exporter_delivers_genai_spans_as_events(server: LiveServer) -> None:
    token = server.create_agent_token("otel-runtime")
    auditor = (
        server.manage("create_api_token", "otel-auditor", "--group", "auditors").strip().splitlines()[-1]
    )
    exporter = OTLPSpanExporter(
        endpoint=f"{server.url}/v1/traces",
        headers={"Authorization": f"Bearer {token}"},
        compression=None,
    )
    provider = TracerProvider(resource=Resource.create({"service.name": "travel-agent"}))
    provider.add_span_processor(BatchSpanProcessor(exporter, max_export_batch_size=512))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span(
        "invoke_agent planner",
        attributes={
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": "planner",
            "gen_ai.conversation.id": "trip-42",
        },
    ) as root:
        for n in range(3):
            with tracer.start_as_current_span(
                f"execute_tool book_{n}",
                attributes={
                    "gen_ai.operation.name": "execute_tool",
                    "gen_ai.tool.name": "book_flight",
                    "gen_ai.tool.call.id": f"call-{n}",
                    "gen_ai.conversation.id": "trip-42",
                },
            ) as tool:
                if n == 2:
                    tool.set_status(Status(StatusCode.ERROR, "no seats"))
        trace_id = format(root.get_span_context().trace_id, "032x")
    assert provider.force_flush(10_000)
    provider.shutdown()

    request = urllib.request.Request(
        f"{server.url}/api/events/?session_id=trip-42&limit=100",
        headers={"Authorization": f"Bearer {auditor}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        events = json.loads(response.read())["results"]
    kinds = [event["event_type"] for event in events]
    assert kinds.count("tool_execution_requested") == 3
    assert kinds.count("tool_execution_completed") == 2 and kinds.count("tool_execution_failed") == 1
    assert kinds[0] == "agent_processing_started" and kinds[-1] == "agent_processing_completed"
    assert {event["correlation_id"] for event in events} == {trace_id}
    assert {event["source"] for event in events} == {"otlp:travel-agent"}
