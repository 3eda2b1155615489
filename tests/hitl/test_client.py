"""The agent-side client: asking, retrying, waiting, and the decorator that gates a tool on a decision.

The first part runs against a fake server (httpx.MockTransport); the last part against Daphne serving
the project, with an operator deciding over the REST API while the agent waits.
"""

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from hitl.client import (
    ApprovalDecision,
    ApprovalRejected,
    ApprovalTimeout,
    HITLClient,
    HITLError,
    HITLUnavailable,
    require_approval,
)

ROOT = Path(__file__).resolve().parent.parent.parent
BASE_URL = "http://hitl.test"


# A fake approval server


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


class FakeServer:
    """The approval API in memory, with scripted failures and decisions.

    `failures` are used up one per HTTP request, in order: "connect" (refused before anything
    happened), "lost" (the request was handled, then the connection dropped before the answer),
    "timeout", or a status code answered instead. `decision` is applied to the request when it has
    been polled `decide_after` times.
    """

    def __init__(
        self,
        *,
        failures: list[Any] | None = None,
        decision: dict[str, Any] | None = None,
        decide_after: int = 1,
        timeout_s: float = 900,
        clock_offset_s: float = 0,
        date_header: bool = False,
    ) -> None:
        self.failures = list(failures or [])
        self.decision = decision
        self.decide_after = decide_after
        self.timeout_s = timeout_s
        self.clock_offset_s = clock_offset_s  # the server's clock against the agent's
        self.date_header = date_header
        self.requests: dict[str, dict[str, Any]] = {}
        self.creations = 0
        self.seen: list[httpx.Request] = []
        self.polls = 0

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.clock_offset_s)

    def client(self, **options: Any) -> HITLClient:
        options = {"retries": 5, "backoff": 0, "transport": httpx.MockTransport(self.handle), **options}
        return HITLClient(BASE_URL, "agent-token", **options)

    def posted(self) -> list[dict[str, Any]]:
        return [
            json.loads(r.content)
            for r in self.seen
            if r.method == "POST" and r.url.path.endswith("requests/")
        ]

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        assert request.headers["Authorization"] == "Bearer agent-token"
        failure = self.failures.pop(0) if self.failures else None
        if failure == "connect":
            raise httpx.ConnectError("connection refused", request=request)
        if failure == "timeout":
            raise httpx.ReadTimeout("timed out", request=request)
        if isinstance(failure, int):
            return httpx.Response(failure, json={"detail": "store unavailable", "code": "store_unavailable"})
        response = self.answer(request)
        if self.date_header:
            response.headers["Date"] = format_datetime(self.now(), usegmt=True)
        if failure == "lost":
            raise httpx.RemoteProtocolError("peer closed connection without response", request=request)
        return response

    def answer(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "POST" and path == "/api/hitl/requests/":
            body = json.loads(request.content)
            existing = self.requests.get(body["call_id"])
            if existing is not None:
                if (existing["tool_name"], existing["arguments"]) != (body["tool_name"], body["arguments"]):
                    return httpx.Response(
                        409, json={"detail": "call_id already used", "code": "call_id_conflict"}
                    )
                return httpx.Response(200, json=existing)
            self.creations += 1
            now = self.now()
            record = {
                "call_id": body["call_id"],
                "session_id": body["session_id"],
                "correlation_id": body.get("correlation_id"),
                "agent": body.get("agent", ""),
                "tool_name": body["tool_name"],
                "arguments": body["arguments"],
                "modified_args": None,
                "status": "pending",
                "reason": body.get("reason", ""),
                "comment": "",
                "decided_by": None,
                "channel": None,
                "created_at": iso(now),
                "decided_at": None,
                "expires_at": iso(now + timedelta(seconds=body.get("timeout_s", self.timeout_s))),
                "on_expire": body.get("on_expire", "reject"),
            }
            self.requests[body["call_id"]] = record
            return httpx.Response(201, json=record)
        call_id = path.split("/")[4]
        found = self.requests.get(call_id)
        if found is None:
            return httpx.Response(404, json={"detail": "no such request", "code": "not_found"})
        record = found
        if request.method == "POST" and path.endswith("/cancel/"):
            if record["status"] != "pending":
                return httpx.Response(409, json={"detail": "already decided", "code": "already_decided"})
            record["status"] = "cancelled"
            return httpx.Response(200, json=record)
        wait = float(request.url.params.get("wait", 0))
        assert 0 <= wait <= 60
        if wait and record["status"] == "pending":
            self.polls += 1
            if self.decision is not None and self.polls >= self.decide_after:
                record.update(self.decision, decided_at=iso(self.now()))
        return httpx.Response(200, json=record)


APPROVE = {"status": "approved", "decided_by": "olga", "channel": "api"}
REJECT = {"status": "rejected", "decided_by": "olga", "channel": "api", "comment": "not this file"}
EXPIRED = {"status": "expired", "channel": "expiry"}
CANCELLED = {"status": "cancelled"}


def edit(**modified: Any) -> dict[str, Any]:
    return {"status": "edited", "decided_by": "olga", "channel": "api", "modified_args": modified}


async def ask(client: HITLClient, sync: bool, **overrides: Any) -> ApprovalDecision:
    """request_approval, or its blocking twin in a worker thread."""
    options = {"tool_name": "write_file", "arguments": {"path": "a.py"}, "session_id": "s-1", **overrides}
    if sync:
        return await asyncio.to_thread(lambda: client.request_approval_sync(**options))
    return await client.request_approval(**options)


# Asking, retrying, waiting


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_retries_reuse_one_call_id_and_create_one_request(sync):
    server = FakeServer(failures=["connect", "lost", 503, "timeout", 502, 504], decision=APPROVE)
    decision = await ask(server.client(retries=6), sync)

    posts = server.posted()
    assert len(posts) == 7  # refused, handled but the answer lost, four more failures, then the answer
    assert len({post["call_id"] for post in posts}) == 1
    uuid.UUID(posts[0]["call_id"])  # a generated uuid4
    assert server.creations == 1 and len(server.requests) == 1
    assert decision.approved and decision.status == "approved" and decision.call_id == posts[0]["call_id"]
    assert decision.arguments == {"path": "a.py"} and decision.decided_by == "olga"


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_a_server_that_stays_unavailable_raises_after_the_retries(sync):
    server = FakeServer(failures=[503] * 10)
    with pytest.raises(HITLUnavailable) as raised:
        await ask(server.client(retries=3), sync, call_id="call-9")
    assert raised.value.status == 503 and raised.value.code == "store_unavailable"
    assert "4 attempts" in str(raised.value)
    assert len(server.seen) == 4 and server.creations == 0


@pytest.mark.parametrize(
    "status, body, code",
    [
        (409, {"detail": "call_id already used", "code": "call_id_conflict"}, "call_id_conflict"),
        (401, {"detail": "Invalid token.", "code": "authentication_failed"}, "authentication_failed"),
        (400, {"detail": "timeout_s: too long", "code": "invalid", "errors": []}, "invalid"),
        (404, "<html>not found</html>", "http_404"),
    ],
)
@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_a_refusal_raises_hitl_error_with_its_code_and_is_not_retried(sync, status, body, code):
    def refuse(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if isinstance(body, str):
            return httpx.Response(status, text=body)
        return httpx.Response(status, json=body)

    seen: list[httpx.Request] = []
    client = HITLClient(BASE_URL, "agent-token", backoff=0, transport=httpx.MockTransport(refuse))
    with pytest.raises(HITLError) as raised:
        await ask(client, sync)
    assert (raised.value.status, raised.value.code) == (status, code)
    assert len(seen) == 1
    if isinstance(body, dict):
        assert body["detail"] in raised.value.detail


async def test_the_same_call_id_for_another_call_is_a_conflict():
    server = FakeServer(decision=APPROVE)
    client = server.client()
    await client.request_approval(tool_name="rm", arguments={"path": "a"}, session_id="s", call_id="c-1")
    with pytest.raises(HITLError) as raised:
        await client.request_approval(tool_name="rm", arguments={"path": "b"}, session_id="s", call_id="c-1")
    assert raised.value.code == "call_id_conflict" and raised.value.status == 409


async def test_long_polls_until_decided_and_sends_what_it_was_given():
    server = FakeServer(decision=edit(path="b.py"), decide_after=3)
    client = server.client(poll_wait=30)
    decision = await client.request_approval(
        tool_name="write_file",
        arguments={"path": "a.py"},
        session_id="s-7",
        call_id="call-7",
        reason="writes a file",
        agent="coder",
        timeout_s=120,
        on_expire="approve",
        correlation_id="trace-1",
        causation_id="6b4b1f0e-53e6-4c6b-9a3f-2f1d8c0e7a11",
    )
    polls = [r for r in server.seen if r.method == "GET"]
    assert len(polls) == 3
    assert all(r.url.path == "/api/hitl/requests/call-7/" and r.url.params["wait"] == "30" for r in polls)
    assert server.posted()[0] == {
        "session_id": "s-7",
        "call_id": "call-7",
        "tool_name": "write_file",
        "arguments": {"path": "a.py"},
        "reason": "writes a file",
        "agent": "coder",
        "timeout_s": 120,
        "on_expire": "approve",
        "correlation_id": "trace-1",
        "causation_id": "6b4b1f0e-53e6-4c6b-9a3f-2f1d8c0e7a11",
    }
    assert decision.status == "edited" and decision.approved and decision.edited
    assert decision.arguments == {"path": "b.py"} and decision.proposed_arguments == {"path": "a.py"}


async def test_a_decided_call_asked_again_returns_its_decision_at_once():
    """An agent that restarts and asks again with its call_id gets the decision, not a new request."""
    server = FakeServer(decision=REJECT)
    client = server.client()
    first = await client.request_approval(tool_name="t", arguments={}, session_id="s", call_id="again")
    polls = server.polls
    second = await client.request_approval(tool_name="t", arguments={}, session_id="s", call_id="again")
    assert first == second and second.status == "rejected" and not second.approved
    assert server.polls == polls and server.creations == 1


async def test_retries_a_long_poll_that_times_out():
    server = FakeServer(decision=APPROVE, decide_after=1)
    client = server.client()
    server.failures = [None, "timeout", 503]  # the creation succeeds, the first two polls fail
    decision = await client.request_approval(tool_name="t", arguments={}, session_id="s")
    assert decision.approved and server.creations == 1
    assert [r.method for r in server.seen] == ["POST", "GET", "GET", "GET"]


@pytest.mark.parametrize("date_header", [False, True], ids=["created_at", "date_header"])
async def test_the_expiry_is_read_on_the_servers_clock(date_header):
    """An agent whose clock is an hour ahead still waits for a request that expires in 5 s."""
    server = FakeServer(decision=APPROVE, decide_after=2, clock_offset_s=-3600, date_header=date_header)
    client = server.client(expiry_grace=0)
    decision = await client.request_approval(tool_name="t", arguments={}, session_id="s", timeout_s=5)
    assert decision.approved and server.polls == 2


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_gives_up_when_the_server_never_expires_the_request(sync):
    server = FakeServer()  # never decides, never expires
    client = server.client(expiry_grace=0.3)
    started = time.monotonic()
    with pytest.raises(ApprovalTimeout) as raised:
        await ask(client, sync, timeout_s=0.2)
    assert raised.value.code == "no_decision"
    assert time.monotonic() - started < 3
    assert 1 <= server.polls <= 4  # paced, not a busy loop


async def test_get_and_cancel():
    server = FakeServer()
    client = server.client()
    task = asyncio.create_task(
        client.request_approval(tool_name="t", arguments={"x": 1}, session_id="s", call_id="c-2")
    )
    while "c-2" not in server.requests:
        await asyncio.sleep(0.01)
    assert (await client.get("c-2"))["status"] == "pending"
    cancelled = await client.cancel("c-2")
    assert cancelled["status"] == "cancelled"
    decision = await asyncio.wait_for(task, 5)
    assert decision.status == "cancelled" and not decision.approved
    # Cancelling again answers 409 on the server; the client returns the request as it is.
    assert client.cancel_sync("c-2")["status"] == "cancelled"
    assert client.get_sync("c-2", wait=1)["call_id"] == "c-2"
    with pytest.raises(HITLError) as raised:
        await client.get("unknown")
    assert raised.value.code == "not_found" and raised.value.status == 404


@pytest.mark.parametrize(
    "record, approved, arguments",
    [
        ({"status": "approved"}, True, {"a": 1}),
        ({"status": "edited", "modified_args": {"a": 2}}, True, {"a": 2}),
        ({"status": "rejected"}, False, {"a": 1}),
        ({"status": "expired", "on_expire": "reject"}, False, {"a": 1}),
        ({"status": "expired", "on_expire": "approve"}, True, {"a": 1}),
        ({"status": "expired", "on_expire": "something new"}, False, {"a": 1}),
        ({"status": "cancelled"}, False, {"a": 1}),
        ({"status": "pending"}, False, {"a": 1}),
        ({"status": "a status from the future"}, False, {"a": 1}),
    ],
)
def test_which_decisions_let_the_tool_run(record, approved, arguments):
    decision = ApprovalDecision.from_request({"call_id": "c", "arguments": {"a": 1}, **record})
    assert decision.approved is approved
    assert decision.arguments == arguments and decision.proposed_arguments == {"a": 1}


def test_an_edit_without_edited_arguments_is_refused_not_run_as_proposed():
    with pytest.raises(HITLError) as raised:
        ApprovalDecision.from_request({"call_id": "c", "arguments": {"a": 1}, "status": "edited"})
    assert raised.value.code == "invalid_response"


@pytest.mark.parametrize(
    "arguments, named",
    [
        ({"when": datetime.now(UTC)}, "arguments['when']"),
        ({"tags": {"a", "b"}}, "arguments['tags']"),
        ({"ratio": float("nan")}, "arguments['ratio']"),
        ({"nested": [{"ok": 1}, {"bad": object()}]}, "arguments['nested'][1]['bad']"),
        ({"map": {1: "a"}}, "arguments['map']"),
    ],
)
async def test_arguments_json_cannot_carry_fail_before_any_request(arguments, named):
    server = FakeServer(decision=APPROVE)
    client = server.client()
    with pytest.raises(TypeError, match=named.replace("[", r"\[")):
        await client.request_approval(tool_name="t", arguments=arguments, session_id="s")
    with pytest.raises(TypeError, match=named.replace("[", r"\[")):
        client.request_approval_sync(tool_name="t", arguments=arguments, session_id="s")
    assert server.seen == []


# The decorator


@dataclass
class Spy:
    """A tool that records how it was called."""

    calls: list[tuple[tuple[Any, ...], dict[str, Any]]]

    def sync_tool(self) -> Callable[..., str]:
        def write_file(path: str, content: str, mode: str = "w") -> str:
            self.calls.append(((path, content), {"mode": mode}))
            return f"wrote {path}"

        return write_file

    def async_tool(self) -> Callable[..., Any]:
        async def write_file(path: str, content: str, mode: str = "w") -> str:
            await asyncio.sleep(0)
            self.calls.append(((path, content), {"mode": mode}))
            return f"wrote {path}"

        return write_file


async def call_tool(tool: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    if asyncio.iscoroutinefunction(tool):
        return await tool(*args, **kwargs)
    return await asyncio.to_thread(tool, *args, **kwargs)


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_the_decorated_tool_runs_with_its_own_arguments_when_approved(sync):
    server = FakeServer(decision=APPROVE)
    spy = Spy([])
    tool = require_approval(server.client(), session_id="s-1", reason="writes")(
        spy.sync_tool() if sync else spy.async_tool()
    )
    assert await call_tool(tool, "a.py", content="x") == "wrote a.py"
    assert spy.calls == [(("a.py", "x"), {"mode": "w"})]
    (posted,) = server.posted()
    assert posted["tool_name"] == "write_file" and posted["reason"] == "writes"
    assert posted["arguments"] == {"path": "a.py", "content": "x", "mode": "w"}  # defaults shown too
    assert tool.__name__ == "write_file"


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_the_decorated_tool_runs_with_the_edited_arguments(sync):
    server = FakeServer(decision=edit(path="safe/a.py", content="y", mode="a"))
    spy = Spy([])
    tool = require_approval(server.client(), session_id="s-1", tool_name="fs.write")(
        spy.sync_tool() if sync else spy.async_tool()
    )
    assert await call_tool(tool, "a.py", "x") == "wrote safe/a.py"
    assert spy.calls == [(("safe/a.py", "y"), {"mode": "a"})]
    assert server.posted()[0]["tool_name"] == "fs.write"


@pytest.mark.parametrize(
    "outcome, on_expire, status",
    [(REJECT, None, "rejected"), (EXPIRED, None, "expired"), (CANCELLED, None, "cancelled")],
    ids=["rejected", "expired", "cancelled"],
)
@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_the_decorated_tool_never_runs_unless_approved(sync, outcome, on_expire, status):
    server = FakeServer(decision=outcome)
    spy = Spy([])
    tool = require_approval(server.client(), session_id="s-1")(spy.sync_tool() if sync else spy.async_tool())
    with pytest.raises(ApprovalRejected) as raised:
        await call_tool(tool, "a.py", "x")
    assert spy.calls == []
    assert raised.value.decision.status == status and raised.value.code == status
    assert raised.value.comment == outcome.get("comment", "")
    assert isinstance(raised.value, HITLError)
    if status == "rejected":
        assert "not this file" in str(raised.value) and "olga" in str(raised.value)


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_expiry_runs_the_tool_only_when_the_agent_asked_for_auto_approval(sync):
    server = FakeServer(decision=EXPIRED)
    spy = Spy([])
    tool = require_approval(server.client(), session_id="s-1", on_expire="approve", timeout_s=5)(
        spy.sync_tool() if sync else spy.async_tool()
    )
    await call_tool(tool, "a.py", "x")
    assert spy.calls == [(("a.py", "x"), {"mode": "w"})]
    assert server.posted()[0]["on_expire"] == "approve" and server.posted()[0]["timeout_s"] == 5


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_a_decorated_tool_with_arguments_json_cannot_carry_fails_before_asking(sync):
    server = FakeServer(decision=APPROVE)
    spy = Spy([])
    tool = require_approval(server.client(), session_id="s-1")(spy.sync_tool() if sync else spy.async_tool())
    with pytest.raises(TypeError, match=r"arguments\['content'\] is a bytes"):
        await call_tool(tool, "a.py", b"raw bytes")
    assert server.seen == [] and spy.calls == []


async def test_session_and_call_ids_may_be_asked_on_every_call():
    server = FakeServer(decision=APPROVE)
    sessions = iter(["s-1", "s-2"])
    calls = iter(["call-a", "call-b"])

    @require_approval(server.client(), session_id=lambda: next(sessions), call_id=lambda: next(calls))
    async def search(query: str) -> str:
        return query

    assert [await search("x"), await search("y")] == ["x", "y"]
    assert [(p["session_id"], p["call_id"]) for p in server.posted()] == [
        ("s-1", "call-a"),
        ("s-2", "call-b"),
    ]


async def test_the_runtimes_tool_execution_requested_is_sent_as_the_cause_of_each_call():
    server = FakeServer(decision=APPROVE)
    causes = iter(["0b5a6e0c-1d1e-4f35-8a0e-7c2b9b3c6d01", None])

    @require_approval(server.client(), session_id="s-1", causation_id=lambda: next(causes))
    async def search(query: str) -> str:
        return query

    assert [await search("x"), await search("y")] == ["x", "y"]
    first, second = server.posted()
    assert first["causation_id"] == "0b5a6e0c-1d1e-4f35-8a0e-7c2b9b3c6d01"
    assert "causation_id" not in second  # none given: none sent


async def test_variadic_and_excluded_parameters():
    """*args go as a list, **kwargs spread out; excluded parameters are neither sent nor editable."""
    server = FakeServer(decision=edit(paths=["c", "d"], force=False, extra=2))
    seen: list[Any] = []

    class Context:
        pass

    context = Context()

    @require_approval(server.client(), session_id="s", exclude=["ctx"])
    def delete(ctx: Context, *paths: str, force: bool = False, **options: Any) -> None:
        seen.append((ctx, paths, force, options))

    await asyncio.to_thread(delete, context, "a", "b", force=True, extra=1)
    assert server.posted()[0]["arguments"] == {"paths": ["a", "b"], "force": True, "extra": 1}
    assert seen == [(context, ("c", "d"), False, {"extra": 2})]


async def test_an_edit_the_tool_cannot_take_never_runs_it():
    server = FakeServer(decision=edit(query="x", unknown=1))
    ran = []

    @require_approval(server.client(), session_id="s")
    async def search(query: str) -> None:
        ran.append(query)

    with pytest.raises(HITLError) as raised:
        await search("q")
    assert raised.value.code == "invalid_edit" and "unknown" in str(raised.value)
    assert ran == []


def test_excluding_a_parameter_the_tool_does_not_have_is_an_error():
    with pytest.raises(ValueError, match="ctx"):
        require_approval(FakeServer().client(), session_id="s", exclude=["ctx"])(lambda query: query)


def test_the_client_imports_and_works_without_django(tmp_path):
    """An agent process has no Django settings; importing and using the client must not load Django."""
    script = """
import json, sys
import httpx
from hitl.client import HITLClient, require_approval

record = {"call_id": "c", "status": "approved", "arguments": {"q": 1}, "expires_at": "2999-01-01T00:00:00Z"}
transport = httpx.MockTransport(lambda request: httpx.Response(201, json=record))
client = HITLClient("http://x", "t", transport=transport)

@require_approval(client, session_id="s", call_id=lambda: "c")
def tool(q):
    return q

assert tool(1) == 1
print(json.dumps(sorted(name for name in sys.modules if name == "django" or name.startswith("django."))))
"""
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


# End to end: Daphne, an agent waiting, an operator deciding over the REST API


async def wait_until_pending(operator: httpx.AsyncClient, session_id: str) -> dict[str, Any]:
    """The pending request of a session, as an operator finds it in the list."""
    deadline = time.monotonic() + 10
    while True:
        response = await operator.get(
            "/api/hitl/requests/", params={"status": "pending", "session_id": session_id}
        )
        assert response.status_code == 200, response.text
        if response.json()["results"]:
            (found,) = response.json()["results"]
            return dict(found)
        assert time.monotonic() < deadline, "the request never appeared"
        await asyncio.sleep(0.05)


async def test_live_the_agent_waits_and_runs_with_the_operators_edit(daphne_server):
    client = HITLClient(daphne_server.base_url, daphne_server.agent_token)
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    proposed = {"path": "/etc/passwd", "content": "x"}
    waiting = asyncio.create_task(
        client.request_approval(
            tool_name="write_file", arguments=proposed, session_id=session_id, reason="writes", timeout_s=60
        )
    )
    async with daphne_server.operator() as operator:
        found = await wait_until_pending(operator, session_id)
        assert found["arguments"] == proposed and found["reason"] == "writes"
        await asyncio.sleep(0.3)
        assert not waiting.done()  # held until somebody decides
        decided_at = time.monotonic()
        response = await operator.post(
            f"/api/hitl/requests/{found['call_id']}/decision/",
            json={
                "decision": "EDIT",
                "modified_args": {"path": "/tmp/passwd", "content": "x"},
                "comment": "tmp",
            },
        )
        assert response.status_code == 200, response.text
    decision = await asyncio.wait_for(waiting, 10)
    assert time.monotonic() - decided_at < 3  # woken by the decision, not by the next poll
    assert decision.status == "edited" and decision.approved
    assert decision.arguments == {"path": "/tmp/passwd", "content": "x"}
    assert decision.proposed_arguments == proposed
    assert (decision.decided_by, decision.channel, decision.comment) == ("op1", "api", "tmp")
    assert decision.call_id == found["call_id"]


async def test_live_a_rejected_tool_never_runs(daphne_server):
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    ran: list[str] = []

    @require_approval(
        HITLClient(daphne_server.base_url, daphne_server.agent_token),
        session_id=lambda: session_id,
        timeout_s=60,
    )
    async def drop_table(table: str) -> None:
        ran.append(table)

    attempt = asyncio.create_task(drop_table("users"))
    async with daphne_server.operator() as operator:
        found = await wait_until_pending(operator, session_id)
        assert found["tool_name"] == "drop_table" and found["arguments"] == {"table": "users"}
        response = await operator.post(
            f"/api/hitl/requests/{found['call_id']}/decision/",
            json={"decision": "REJECT", "comment": "not in production"},
        )
        assert response.status_code == 200, response.text
    with pytest.raises(ApprovalRejected) as raised:
        await asyncio.wait_for(attempt, 10)
    assert raised.value.comment == "not in production"
    assert raised.value.decision.status == "rejected" and raised.value.decision.decided_by == "op1"
    assert ran == []


def test_live_an_expired_request_never_runs_the_tool(daphne_server):
    ran: list[str] = []

    @require_approval(
        HITLClient(daphne_server.base_url, daphne_server.agent_token), session_id="s-expiry", timeout_s=1
    )
    def send_email(to: str) -> None:
        ran.append(to)

    started = time.monotonic()
    with pytest.raises(ApprovalRejected) as raised:
        send_email("everyone@example.com")
    assert raised.value.decision.status == "expired" and raised.value.decision.channel == "expiry"
    assert time.monotonic() - started < 6
    assert ran == []


async def test_live_cancel_and_resume(daphne_server):
    client = HITLClient(daphne_server.base_url, daphne_server.agent_token)
    call_id = f"call-{uuid.uuid4().hex[:8]}"
    options = {"tool_name": "deploy", "arguments": {"env": "prod"}, "session_id": "s-c", "call_id": call_id}
    waiting = asyncio.create_task(client.request_approval(**options, timeout_s=60))
    while True:
        try:
            assert (await client.get(call_id))["status"] == "pending"
            break
        except HITLError as error:
            assert error.code == "not_found"
            await asyncio.sleep(0.05)
    assert (await client.cancel(call_id))["status"] == "cancelled"
    decision = await asyncio.wait_for(waiting, 10)
    assert decision.status == "cancelled" and not decision.approved
    # Asking again with the same call_id (an agent that restarted) gets the same outcome, at once.
    again = await asyncio.wait_for(client.request_approval(**options, timeout_s=60), 5)
    assert again.status == "cancelled"
    with pytest.raises(HITLError) as raised:
        await client.request_approval(**{**options, "arguments": {"env": "staging"}})
    assert raised.value.code == "call_id_conflict"
