"""eventbus-mcp-gate: what the gate adds to an ungated MCP tool call.

The same MCP client (the official SDK: `stdio_client` + `ClientSession`) calls the `echo` tool of the
same upstream MCP server (tests/client/upstream_server.py, the SDK's MCPServer over stdio) N times
(default 300, after 30 untimed warm-up calls), once directly and once through `eventbus-mcp-gate`
(`--gate 'delete_*'`: echo is not held), each call timed alone from the client's side (call to result).
The gate publishes its two events per call to a real server: Daphne over a fresh SQLite database
(migrated here, thrown away at the end), with an agents token from `manage.py create_api_token`; the
events must all be stored by the end (checked through GET /api/events/?session_id=, auditor token).

Goal (issue 12): the gate adds under 5 ms at the median. The last line printed is the overhead at the
median, in ms.

Run from the repository root: `.venv/bin/python benchmarks/mcp_gate.py [--calls N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import statistics
import sys
import time
import uuid
from contextlib import AsyncExitStack
from typing import Any

from _common import ROOT, api_token, daphne, manage, percentile, positive_int, sqlite_file

UPSTREAM = ROOT / "tests" / "client" / "upstream_server.py"
WARMUP = 30


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def time_calls(command: list[str], env: dict[str, str], calls: int) -> list[float]:
    """Milliseconds of each of `calls` echo calls through the MCP server that `command` starts."""
    from mcp import ClientSession, StdioServerParameters, stdio_client

    parameters = StdioServerParameters(command=command[0], args=command[1:], env=env)
    timings: list[float] = []
    async with AsyncExitStack() as stack:
        read, write = await stack.enter_async_context(stdio_client(parameters))
        session = await stack.enter_async_context(ClientSession(read, write))
        await session.initialize()
        await session.list_tools()
        for index in range(WARMUP + calls):
            started = time.perf_counter()
            result = await session.call_tool("echo", {"text": f"call {index}"})
            elapsed = (time.perf_counter() - started) * 1000
            if result.is_error or result.content[0].text != f"call {index}":  # type: ignore[union-attr]
                raise RuntimeError(f"unexpected result: {result!r}")
            if index >= WARMUP:
                timings.append(elapsed)
    return timings


def summary(timings: list[float]) -> dict[str, float]:
    ordered = sorted(timings)
    return {
        "median": statistics.median(ordered),
        "p95": percentile(ordered, 95),
        "p99": percentile(ordered, 99),
        "mean": statistics.fmean(ordered),
    }


def stored_events(port: int, token: str, session_id: str) -> int:
    count, path = 0, f"/api/events/?session_id={session_id}&limit=500"
    while path:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
            body = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        count += sum(1 for event in body["results"] if event.get("source") == "eventbus-mcp-gate")
        next_url = body.get("next")
        path = next_url[next_url.index("/api/") :] if next_url else ""
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=positive_int, default=300, help="timed calls each way (300)")
    args = parser.parse_args()

    upstream = [sys.executable, str(UPSTREAM)]
    with sqlite_file("bench_mcp_gate_") as path:
        env = dict(os.environ, DATABASE_URL=f"sqlite:///{path}", EVENTS_LOG_LEVEL="WARNING")
        env.pop("REDIS_URL", None)
        manage(env, "migrate", "--noinput", "-v0")
        agent = api_token(env, "bench-gate-agent", "agents")
        auditor = api_token(env, "bench-gate-auditor", "auditors")
        with daphne(env, log) as (port, _pid):
            session_id = f"bench-mcp-{uuid.uuid4()}"
            gate_env = {
                "EVENTBUS_URL": f"http://127.0.0.1:{port}",
                "EVENTBUS_TOKEN": agent,
                "EVENTBUS_GATE_LOG_LEVEL": "WARNING",
            }
            gate = [sys.executable, "-m", "eventbus_client.mcp_gate", "--gate", "delete_*"]
            gate += ["--session", session_id, "--", *upstream]

            direct = asyncio.run(time_calls(upstream, {}, args.calls))
            log(f"direct: {args.calls} calls")
            gated = asyncio.run(time_calls(gate, gate_env, args.calls))
            log(f"through the gate: {args.calls} calls")

            expected = 2 * (WARMUP + args.calls)
            deadline = time.monotonic() + 30
            stored = stored_events(port, auditor, session_id)
            while stored < expected and time.monotonic() < deadline:
                time.sleep(0.5)
                stored = stored_events(port, auditor, session_id)

    figures: dict[str, Any] = {"calls": args.calls, "direct": summary(direct), "gate": summary(gated)}
    figures["events_stored"] = stored
    figures["events_expected"] = expected
    for name in ("direct", "gate"):
        f = figures[name]
        print(
            f"{name:>6}: median {f['median']:.3f} ms, p95 {f['p95']:.3f} ms, p99 {f['p99']:.3f} ms, "
            f"mean {f['mean']:.3f} ms"
        )
    print(f"events stored: {stored} of {expected}")
    overhead = figures["gate"]["median"] - figures["direct"]["median"]
    print(f"overhead at the median: {overhead:.3f} ms (goal: under 5 ms)")
    if stored < expected:
        sys.exit(f"only {stored} of the gate's {expected} events were stored")


if __name__ == "__main__":
    main()
