"""OTLP ingest: GenAI spans per second through `POST /v1/traces` against the same events through
`POST /api/events/`, on one Daphne over a fresh database, in one run.

Each side sends the same work sequentially from one client (keep-alive): OTLP as protobuf requests of
512 `execute_tool` spans (1,024 events each: requested and completed), the anchor as JSON lists of the
very events those spans become (built with the server's own mapping, so both sides store the same rows),
split in two lists of 512 per request (the API takes at most 1,000 per request). Prints both rates and
the ratio OTLP/REST last (goal: at least 0.7).

    python benchmarks/otlp_ingest.py [--spans 20480] [--batch 512] [--database sqlite|postgres]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import time
import uuid
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from _common import DEFAULT_POSTGRES_SERVER, ROOT, api_token, daphne, manage, positive_int, postgres_database

sys.path.insert(0, str(ROOT))

GOAL = 0.7
T0 = 1_767_000_000_000_000_000


def log(message: str) -> None:
    print(f"[otlp_ingest] {message}", file=sys.stderr, flush=True)


def build_request(batch: int, offset: int, trace: bytes) -> Any:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

    def kv(key: str, value: str) -> KeyValue:
        return KeyValue(key=key, value=AnyValue(string_value=value))

    spans = []
    for n in range(offset, offset + batch):
        spans.append(
            Span(
                trace_id=trace,
                span_id=n.to_bytes(8, "big") if n else b"\x00" * 7 + b"\x01",
                name="execute_tool",
                start_time_unix_nano=T0 + n * 1_000_000,
                end_time_unix_nano=T0 + n * 1_000_000 + 500_000,
                attributes=[
                    kv("gen_ai.operation.name", "execute_tool"),
                    kv("gen_ai.tool.name", "search"),
                    kv("gen_ai.tool.call.id", f"call-{n}"),
                    kv("gen_ai.conversation.id", "bench-session"),
                    kv("gen_ai.tool.call.arguments", '{"q": "refund policy", "limit": 5}'),
                ],
            )
        )
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=[kv("service.name", "bench")]),
                scope_spans=[ScopeSpans(spans=spans)],
            )
        ]
    )


def post(conn: http.client.HTTPConnection, path: str, body: bytes, token: str, content_type: str) -> None:
    conn.request(
        "POST", path, body=body, headers={"Authorization": f"Bearer {token}", "Content-Type": content_type}
    )
    response = conn.getresponse()
    payload = response.read()
    if response.status not in (200, 201):
        raise RuntimeError(f"{path}: {response.status} {payload[:300]!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=positive_int, default=20_480, help="a multiple of 4 batches")
    parser.add_argument("--batch", type=positive_int, default=512)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "eventbus_project.settings")
    import django

    django.setup()
    from events.otlp import map_spans

    home = f"/tmp/otlp-bench-{uuid.uuid4().hex[:8]}"
    os.makedirs(home)
    env = {**os.environ, "VAR_DIR": home, "DEBUG": "false", "SECURE_SSL_REDIRECT": "false"}
    context: AbstractContextManager[str]
    if args.database == "postgres":
        context = postgres_database(DEFAULT_POSTGRES_SERVER, f"bench_otlp_{uuid.uuid4().hex[:8]}")
    else:
        context = nullcontext(f"sqlite:///{home}/db.sqlite3")
    with context as url:
        env["DATABASE_URL"] = url
        manage(env, "migrate", "--noinput", "-v0")
        token = api_token(env, "bench-agent", "agents")
        requests = []
        lists = []
        for offset in range(0, args.spans, args.batch):
            # Two traces: the OTLP side and the REST side store different events (no idempotent no-ops).
            otlp_request = build_request(args.batch, offset, uuid.uuid4().bytes)
            requests.append(otlp_request.SerializeToString())
            rest_events = map_spans(build_request(args.batch, offset, uuid.uuid4().bytes)).events
            half = len(rest_events) // 2
            lists.append(json.dumps(rest_events[:half]).encode())
            lists.append(json.dumps(rest_events[half:]).encode())
        events_total = 2 * args.spans
        with daphne(env, log) as (port, _pid):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            # Warm-up: one of each.
            post(
                conn,
                "/v1/traces",
                build_request(8, 10**9, uuid.uuid4().bytes).SerializeToString(),
                token,
                "application/x-protobuf",
            )
            post(
                conn,
                "/api/events/",
                json.dumps(map_spans(build_request(8, 10**9 + 8, uuid.uuid4().bytes)).events).encode(),
                token,
                "application/json",
            )
            # Alternating rounds (REST, OTLP, OTLP, REST): the table grows under both sides alike.
            rest_s = otlp_s = 0.0
            quarter_lists, quarter_requests = len(lists) // 4, len(requests) // 4
            for round_index, side in enumerate(("rest", "otlp", "otlp", "rest")):
                half = round_index // 2  # the first two rounds take the first half of each side's work
                if side == "rest":
                    chunk = lists[(half * 2) * quarter_lists : (half * 2 + 2) * quarter_lists]
                    started = time.perf_counter()
                    for body in chunk:
                        post(conn, "/api/events/", body, token, "application/json")
                    rest_s += time.perf_counter() - started
                else:
                    part = round_index - 1  # rounds 1 and 2: the two halves of the OTLP work
                    chunk = requests[(part * 2) * quarter_requests : (part * 2 + 2) * quarter_requests]
                    started = time.perf_counter()
                    for body in chunk:
                        post(conn, "/v1/traces", body, token, "application/x-protobuf")
                    otlp_s += time.perf_counter() - started
            conn.close()
    rest_rate = events_total / rest_s
    otlp_rate = events_total / otlp_s
    print(f"database: {args.database}; {args.spans} spans ({events_total} events) in batches of {args.batch}")
    print(f"POST /api/events/ (lists of {args.batch} events): {rest_rate:,.0f} events/s ({rest_s:.2f} s)")
    print(
        f"POST /v1/traces (protobuf, {args.batch} spans): {otlp_rate:,.0f} events/s, "
        f"{args.spans / otlp_s:,.0f} spans/s ({otlp_s:.2f} s)"
    )
    print(f"goal: OTLP/REST >= {GOAL}")
    print(f"ratio OTLP/REST: {otlp_rate / rest_rate:.2f}")


if __name__ == "__main__":
    main()
