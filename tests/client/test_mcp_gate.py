"""eventbus-mcp-gate end to end: the real MCP client (the SDK's stdio and streamable HTTP clients) talks
to the gate, the gate to a real upstream MCP server (tests/client/upstream_server.py) and to the app
under Daphne, where an operator decides through the REST API."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mcp")

import anyio  # noqa: E402
from mcp import ClientSession, StdioServerParameters, stdio_client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from mcp.shared.exceptions import MCPError  # noqa: E402

from tests.e2e.conftest import LiveServer  # noqa: E402

pytestmark = [pytest.mark.timeout(90)]

UPSTREAM = Path(__file__).with_name("upstream_server.py")
WAIT_S = 15.0


@dataclass
class App:
    server: LiveServer
    agent: str  # API tokens
    operator: str
    auditor: str
    operator_name: str

    async def api(self, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
        return await asyncio.to_thread(self.server.api, method, path, token, body)

    async def pending(self, session_id: str, tool_name: str) -> dict[str, Any]:
        """The one pending approval request of the session for the tool, once it exists."""
        deadline = time.monotonic() + WAIT_S
        while True:
            status, body = await self.api(
                "GET", f"/api/hitl/requests/?session_id={session_id}&status=pending", self.operator
            )
            assert status == 200, body
            found = [r for r in body["results"] if r["tool_name"] == tool_name]
            if found:
                assert len(found) == 1, found
                return found[0]
            assert time.monotonic() < deadline, f"no pending request for {tool_name} in {session_id}"
            await asyncio.sleep(0.1)

    async def decide(self, call_id: str, decision: str, **body: Any) -> None:
        status, answer = await self.api(
            "POST", f"/api/hitl/requests/{call_id}/decision/", self.operator, {"decision": decision, **body}
        )
        assert status == 200, answer

    async def events(self, session_id: str, count: int) -> list[dict[str, Any]]:
        """The session's stored events from the gate (the server adds its own approval events), once
        there are at least `count`."""
        deadline = time.monotonic() + WAIT_S
        while True:
            status, body = await self.api(
                "GET", f"/api/events/?session_id={session_id}&limit=500", self.auditor
            )
            assert status == 200, body
            events = [event for event in body["results"] if event["source"] == "eventbus-mcp-gate"]
            if len(events) >= count:
                return events
            assert time.monotonic() < deadline, f"{len(events)} events of {count}: {body}"
            await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
def app() -> Iterator[App]:
    with tempfile.TemporaryDirectory(prefix="mcp-gate-") as home:
        server = LiveServer(Path(home))
        server.start()
        try:
            token = lambda name, group: server.manage("create_api_token", name, "--group", group).split()[-1]  # noqa: E731
            yield App(
                server=server,
                agent=token("gate-agent", "agents"),
                operator=token("gate-operator", "operators"),
                auditor=token("gate-auditor", "auditors"),
                operator_name="gate-operator",
            )
        finally:
            server.stop()


@dataclass
class Gate:
    session: ClientSession
    session_id: str
    calls_log: Path

    def upstream_calls(self) -> list[dict[str, Any]]:
        if not self.calls_log.exists():
            return []
        return [json.loads(line) for line in self.calls_log.read_text().splitlines()]


def gate_env(app: App, calls_log: Path) -> dict[str, str]:
    return {
        "EVENTBUS_URL": app.server.url,
        "EVENTBUS_TOKEN": app.agent,
        "EVENTBUS_GATE_PROGRESS_S": "0.2",
        "UPSTREAM_CALL_LOG": str(calls_log),
    }


def gate_args(session_id: str, *options: str) -> list[str]:
    return ["-m", "eventbus_client.mcp_gate", "--session", session_id, "--agent", "gate-test", *options]


@asynccontextmanager
async def open_gate(app: App, tmp_path: Path, *options: str) -> AsyncIterator[Gate]:
    """The gate (over stdio) in front of the test upstream, with `options`; an initialized client session."""
    session_id = f"mcp-{uuid.uuid4()}"
    calls_log = tmp_path / f"calls-{session_id}.jsonl"
    parameters = StdioServerParameters(
        command=sys.executable,
        args=[*gate_args(session_id, *options), "--", sys.executable, str(UPSTREAM)],
        env=gate_env(app, calls_log),
    )
    with (tmp_path / "gate-stderr.log").open("a") as errlog:
        async with (
            stdio_client(parameters, errlog=errlog) as (read, write),
            ClientSession(read, write) as session,
        ):
            with anyio.fail_after(30):
                await session.initialize()
            yield Gate(session, session_id, calls_log)


def text(result: Any) -> str:
    return "\n".join(block.text for block in result.content if block.type == "text")


@asynccontextmanager
async def direct_upstream(tmp_path: Path) -> AsyncIterator[ClientSession]:
    parameters = StdioServerParameters(command=sys.executable, args=[str(UPSTREAM)])
    with (tmp_path / "upstream-stderr.log").open("a") as errlog:
        async with (
            stdio_client(parameters, errlog=errlog) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            yield session


async def test_lists_and_ungated_calls_pass_through(app: App, tmp_path: Path) -> None:
    async with direct_upstream(tmp_path) as direct:
        expected_tools = (await direct.list_tools()).model_dump(by_alias=True)
        expected_echo = (await direct.call_tool("echo", {"text": "hi", "times": 2})).model_dump(by_alias=True)
        expected = {
            "resources": (await direct.list_resources()).model_dump(by_alias=True),
            "templates": (await direct.list_resource_templates()).model_dump(by_alias=True),
            "greeting": (await direct.read_resource("memo://greeting")).model_dump(by_alias=True),
            "note": (await direct.read_resource("memo://notes/x")).model_dump(by_alias=True),
            "prompts": (await direct.list_prompts()).model_dump(by_alias=True),
            "prompt": (await direct.get_prompt("review", {"subject": "the gate"})).model_dump(by_alias=True),
        }
        direct_caps = direct.initialize_result.capabilities

    async with open_gate(app, tmp_path, "--gate", "delete_*") as gate:
        session = gate.session
        assert session.initialize_result is not None
        assert session.initialize_result.capabilities.tools is not None
        assert (session.initialize_result.capabilities.resources is None) == (direct_caps.resources is None)
        assert (session.initialize_result.capabilities.prompts is None) == (direct_caps.prompts is None)
        tools = await session.list_tools()
        assert tools.model_dump(by_alias=True) == expected_tools
        annotations = {tool.name: tool.annotations for tool in tools.tools}
        assert annotations["read_file"].read_only_hint is True
        assert annotations["delete_records"].destructive_hint is True

        started = time.monotonic()
        echo = await session.call_tool("echo", {"text": "hi", "times": 2})
        assert time.monotonic() - started < 5
        assert echo.model_dump(by_alias=True) == expected_echo
        assert (await session.call_tool("read_file", {"path": "/etc/motd"})).is_error is not True
        failed = await session.call_tool("fail", {"reason": "broken"})
        assert failed.is_error is True

        assert (await session.list_resources()).model_dump(by_alias=True) == expected["resources"]
        assert (await session.list_resource_templates()).model_dump(by_alias=True) == expected["templates"]
        assert (await session.read_resource("memo://greeting")).model_dump(by_alias=True) == expected[
            "greeting"
        ]
        assert (await session.read_resource("memo://notes/x")).model_dump(by_alias=True) == expected["note"]
        assert (await session.list_prompts()).model_dump(by_alias=True) == expected["prompts"]
        prompt = await session.get_prompt("review", {"subject": "the gate"})
        assert prompt.model_dump(by_alias=True) == expected["prompt"]
        assert [call["tool"] for call in gate.upstream_calls()] == ["echo", "read_file", "fail"]

        # Every call: tool_execution_requested, then completed or failed, tied by call_id.
        events = await app.events(gate.session_id, 6)
    by_call: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_call.setdefault(event["data"]["call_id"], []).append(event)
    outcomes = {
        calls[0]["data"]["tool_name"]: [(e["event_type"], e["data"].get("arguments")) for e in calls]
        for calls in by_call.values()
    }
    assert outcomes == {
        "echo": [
            ("tool_execution_requested", {"text": "hi", "times": 2}),
            ("tool_execution_completed", None),
        ],
        "read_file": [
            ("tool_execution_requested", {"path": "/etc/motd"}),
            ("tool_execution_completed", None),
        ],
        "fail": [("tool_execution_requested", {"reason": "broken"}), ("tool_execution_failed", None)],
    }
    completed = next(e for e in events if e["event_type"] == "tool_execution_completed")
    assert completed["data"]["duration_ms"] >= 0 and completed["data"]["agent"] == "gate-test"
    assert completed["correlation_id"] == completed["data"]["call_id"]


async def test_approved_call_runs_upstream(app: App, tmp_path: Path) -> None:
    async with open_gate(app, tmp_path, "--gate", "delete_*") as gate, anyio.create_task_group() as group:
        results: list[Any] = []

        async def call() -> None:
            results.append(
                await gate.session.call_tool("delete_records", {"table": "users", "where": "id=1"})
            )

        group.start_soon(call)
        request = await app.pending(gate.session_id, "delete_records")
        assert request["arguments"] == {"table": "users", "where": "id=1"}
        assert request["agent"] == "gate-test"
        assert gate.upstream_calls() == []  # held
        await app.decide(request["call_id"], "APPROVE")
    assert text(results[0]) == "deleted from users where id=1"
    assert results[0].is_error is not True
    assert gate.upstream_calls() == [
        {"tool": "delete_records", "arguments": {"table": "users", "where": "id=1"}}
    ]
    events = await app.events(gate.session_id, 2)
    assert [e["event_type"] for e in events if e["data"].get("call_id") == request["call_id"]] == [
        "tool_execution_requested",
        "tool_execution_completed",
    ]
    # The request and its decision hang under the call's tool_execution_requested, in its trace.
    (requested,) = [e for e in events if e["event_type"] == "tool_execution_requested"]
    assert request["correlation_id"] == requested["correlation_id"] == request["call_id"]
    status, body = await app.api(
        "GET", f"/api/events/?correlation_id={request['call_id']}&event_category=hitl", app.auditor
    )
    assert status == 200, body
    by_type = {e["event_type"]: e for e in body["results"]}
    assert by_type["tool_approval_required"]["causation_id"] == requested["event_id"]
    assert by_type["hitl_decision_made"]["causation_id"] == by_type["tool_approval_required"]["event_id"]


async def test_edited_call_runs_with_the_operators_arguments(app: App, tmp_path: Path) -> None:
    async with open_gate(app, tmp_path, "--gate", "ech?") as gate, anyio.create_task_group() as group:
        results: list[Any] = []

        async def call() -> None:
            results.append(await gate.session.call_tool("echo", {"text": "rm -rf /", "times": 3}))

        group.start_soon(call)
        request = await app.pending(gate.session_id, "echo")
        await app.decide(
            request["call_id"], "EDIT", modified_args={"text": "ls", "times": 1}, comment="safer"
        )
    assert text(results[0]) == "ls"
    assert gate.upstream_calls() == [{"tool": "echo", "arguments": {"text": "ls", "times": 1}}]


async def test_rejected_call_is_an_error_naming_the_decider_and_comment(app: App, tmp_path: Path) -> None:
    async with open_gate(app, tmp_path, "--gate", "delete_*") as gate, anyio.create_task_group() as group:
        results: list[Any] = []

        async def call() -> None:
            results.append(await gate.session.call_tool("delete_records", {"table": "orders"}))

        group.start_soon(call)
        request = await app.pending(gate.session_id, "delete_records")
        await app.decide(request["call_id"], "REJECT", comment="not on a Friday")
    result = results[0]
    assert result.is_error is True
    message = text(result)
    assert "rejected" in message and app.operator_name in message and "not on a Friday" in message
    assert gate.upstream_calls() == []
    events = await app.events(gate.session_id, 2)
    failed = [e for e in events if e["event_type"] == "tool_execution_failed"]
    assert len(failed) == 1 and failed[0]["data"]["error_type"] == "ApprovalRejected"
    assert "not on a Friday" in failed[0]["data"]["error_message"]


async def test_gate_destructive_holds_only_destructive_tools(app: App, tmp_path: Path) -> None:
    async with open_gate(app, tmp_path, "--gate-destructive") as gate, anyio.create_task_group() as group:
        # Called without listing first: the gate looks the annotations up itself.
        results: list[Any] = []

        async def call() -> None:
            results.append(await gate.session.call_tool("delete_records", {"table": "t"}))

        group.start_soon(call)
        request = await app.pending(gate.session_id, "delete_records")
        with anyio.fail_after(5):  # not held, while another call is
            assert text(await gate.session.call_tool("read_file", {"path": "a"})) == "contents of a"
            assert text(await gate.session.call_tool("echo", {"text": "b"})) == "b"
        await app.decide(request["call_id"], "APPROVE")
    assert text(results[0]) == "deleted from t where true"


async def test_progress_while_waiting(app: App, tmp_path: Path) -> None:
    seen: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, message))

    async with open_gate(app, tmp_path, "--gate", "delete_*") as gate, anyio.create_task_group() as group:
        results: list[Any] = []

        async def call() -> None:
            results.append(
                await gate.session.call_tool("delete_records", {"table": "t"}, progress_callback=on_progress)
            )

        group.start_soon(call)
        request = await app.pending(gate.session_id, "delete_records")
        with anyio.fail_after(WAIT_S):
            while len(seen) < 3:  # every 0.2 s here (EVENTBUS_GATE_PROGRESS_S)
                await anyio.sleep(0.05)
        await app.decide(request["call_id"], "APPROVE")
    assert text(results[0]) == "deleted from t where true"
    values = [value for value, _ in seen]
    assert values == sorted(values) and len(set(values)) == len(values)
    assert "approve delete_records" in (seen[0][1] or "")


async def test_client_cancellation_cancels_the_request(app: App, tmp_path: Path) -> None:
    async with open_gate(app, tmp_path, "--gate", "delete_*") as gate:
        async with anyio.create_task_group() as group:
            group.start_soon(gate.session.call_tool, "delete_records", {"table": "t"})
            request = await app.pending(gate.session_id, "delete_records")
            group.cancel_scope.cancel()  # the SDK sends notifications/cancelled
        deadline = time.monotonic() + WAIT_S
        while True:
            status, body = await app.api("GET", f"/api/hitl/requests/{request['call_id']}/", app.operator)
            assert status == 200
            if body["status"] == "cancelled":
                break
            assert time.monotonic() < deadline, body
            await asyncio.sleep(0.1)
        # The gate still serves.
        assert text(await gate.session.call_tool("echo", {"text": "still here"})) == "still here"
        assert [call["tool"] for call in gate.upstream_calls()] == ["echo"]
        events = await app.events(gate.session_id, 4)
    failed = [e for e in events if e["event_type"] == "tool_execution_failed"]
    assert [e["data"]["error_type"] for e in failed] == ["Cancelled"]


async def test_upstream_that_dies_is_an_error_and_the_gate_stops(app: App, tmp_path: Path) -> None:
    async with open_gate(app, tmp_path) as gate:
        with anyio.fail_after(10), pytest.raises(MCPError):
            await gate.session.call_tool("crash", {})
        # The gate exits: its stdout closes, so the client's next request fails at once.
        with anyio.fail_after(10), pytest.raises(MCPError):
            while True:
                await gate.session.send_ping()
                await anyio.sleep(0.1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_streamable_http_mode(app: App, tmp_path: Path) -> None:
    session_id = f"mcp-{uuid.uuid4()}"
    port = free_port()
    calls_log = tmp_path / "calls-http.jsonl"
    with (tmp_path / "gate-http.log").open("wb") as log:
        process = await anyio.open_process(
            [sys.executable, *gate_args(session_id, "--gate", "delete_*", "--http", f"127.0.0.1:{port}")]
            + ["--", sys.executable, str(UPSTREAM)],
            env={**__import__("os").environ, **gate_env(app, calls_log)},
            stdout=log,
            stderr=log,
        )
    try:
        with anyio.fail_after(30):
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    assert process.returncode is None, (tmp_path / "gate-http.log").read_text()
                    await anyio.sleep(0.1)
        url = f"http://127.0.0.1:{port}/mcp"
        async with streamable_http_client(url) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            assert {tool.name for tool in (await session.list_tools()).tools} >= {"echo", "delete_records"}
            assert text(await session.call_tool("echo", {"text": "over http"})) == "over http"
            async with anyio.create_task_group() as group:
                results: list[Any] = []

                async def call() -> None:
                    results.append(await session.call_tool("delete_records", {"table": "http"}))

                group.start_soon(call)
                request = await app.pending(session_id, "delete_records")
                await app.decide(request["call_id"], "APPROVE")
            assert text(results[0]) == "deleted from http where true"
    finally:
        process.terminate()
        with anyio.move_on_after(15):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
