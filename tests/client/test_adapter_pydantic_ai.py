"""eventbus_client.pydantic_ai: deferred tool approvals answered by the desk.

An agent driven by Pydantic AI's FunctionModel (no network, no key) with a `requires_approval=True`
tool, against a fake desk (httpx.MockTransport) and against Daphne with an operator deciding.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

pytest.importorskip("pydantic_ai")

from pydantic_ai import Agent  # noqa: E402
from pydantic_ai.messages import (  # noqa: E402
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel  # noqa: E402
from pydantic_ai.tools import DeferredToolRequests, ToolApproved, ToolDenied  # noqa: E402

from eventbus_client import HITLClient  # noqa: E402
from eventbus_client.pydantic_ai import desk_capability, resolve_deferred  # noqa: E402
from tests.hitl.test_client import (  # noqa: E402
    APPROVE,
    CANCELLED,
    REJECT,
    FakeServer,
    edit,
    wait_until_pending,
)

PROPOSED = {"path": "/etc/passwd", "content": "x"}


class Scripted:
    """A model that calls write_file once, then answers; `answers` holds what the tool answered it."""

    def __init__(self, call_id: str = "call_1") -> None:
        self.call_id = call_id
        self.answers: list[Any] = []

    def respond(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        returns = [
            part
            for message in messages
            if isinstance(message, ModelRequest)
            for part in message.parts
            if isinstance(part, ToolReturnPart)
        ]
        if not returns:
            return ModelResponse(
                parts=[ToolCallPart("write_file", dict(PROPOSED), tool_call_id=self.call_id)]
            )
        self.answers = [part.content for part in returns]
        return ModelResponse(parts=[TextPart("done")])


class Files:
    def __init__(self) -> None:
        self.written: list[tuple[str, str]] = []

    def agent(self, model: Scripted, **options: Any) -> Agent[None, Any]:
        agent: Agent[None, Any] = Agent(
            FunctionModel(model.respond), output_type=[str, DeferredToolRequests], **options
        )

        @agent.tool_plain(requires_approval=True)
        def write_file(path: str, content: str) -> str:
            """Write content to the file at path."""
            self.written.append((path, content))
            return f"wrote {len(content)} bytes to {path}"

        return agent


async def run_through_desk(files: Files, model: Scripted, client: HITLClient, session_id: str) -> Any:
    agent = files.agent(model)
    result = await agent.run("write it")
    assert isinstance(result.output, DeferredToolRequests) and files.written == []
    results = await resolve_deferred(result.output, client, session_id=session_id, agent="writer")
    final = await agent.run(message_history=result.all_messages(), deferred_tool_results=results)
    return results, final


async def test_approved_the_tool_runs_with_the_proposed_arguments():
    desk, files, model = FakeServer(decision=APPROVE), Files(), Scripted()
    results, final = await run_through_desk(files, model, desk.client(), "s-1")
    assert results.approvals == {"call_1": ToolApproved()} and results.answered_by == {"call_1": "olga"}
    assert files.written == [("/etc/passwd", "x")]
    assert final.output == "done" and model.answers == ["wrote 1 bytes to /etc/passwd"]
    (asked,) = desk.posted()
    assert asked["tool_name"] == "write_file" and asked["arguments"] == PROPOSED
    assert (asked["session_id"], asked["call_id"], asked["agent"]) == ("s-1", "s-1:call_1", "writer")


async def test_edited_the_tool_runs_with_the_operators_arguments():
    desk, files, model = FakeServer(decision=edit(path="/tmp/passwd", content="x")), Files(), Scripted()
    results, final = await run_through_desk(files, model, desk.client(), "s-2")
    assert results.approvals == {
        "call_1": ToolApproved(override_args={"path": "/tmp/passwd", "content": "x"})
    }
    assert files.written == [("/tmp/passwd", "x")]
    assert model.answers == ["wrote 1 bytes to /tmp/passwd"]


@pytest.mark.parametrize(
    ("decision", "expected"),
    [
        (REJECT, "The call to write_file was not run: it was rejected by olga. Reason: not this file"),
        (CANCELLED, "The call to write_file was not run: its approval request was cancelled."),
    ],
)
async def test_refused_the_tool_never_runs_and_the_model_reads_why(decision, expected):
    desk, files, model = FakeServer(decision=decision), Files(), Scripted()
    results, final = await run_through_desk(files, model, desk.client(), "s-3")
    assert results.approvals == {"call_1": ToolDenied(expected)}
    assert files.written == [] and final.output == "done"
    assert model.answers == [expected]


async def test_the_capability_waits_on_the_desk_inside_the_run():
    desk, files, model = FakeServer(decision=edit(path="/tmp/passwd", content="x")), Files(), Scripted()
    agent = files.agent(model, capabilities=[desk_capability(desk.client(), session_id=lambda: "s-4")])
    result = await agent.run("write it")
    assert result.output == "done" and files.written == [("/tmp/passwd", "x")]
    assert desk.posted()[0]["call_id"] == "s-4:call_1"


async def test_answering_the_same_requests_again_asks_nobody_twice():
    desk, files, model = FakeServer(decision=REJECT), Files(), Scripted()
    result = await files.agent(model).run("write it")
    client = desk.client()
    first = await resolve_deferred(result.output, client, session_id="s-5")
    again = await resolve_deferred(result.output, client, session_id="s-5")
    assert first == again and desk.creations == 1


# End to end: Daphne, an operator deciding while the run waits in the capability


async def test_live_the_operators_edit_reaches_the_tool(daphne_server):
    files, model = Files(), Scripted(call_id=f"call_{uuid.uuid4().hex[:6]}")
    client = HITLClient(daphne_server.base_url, daphne_server.agent_token)
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    agent = files.agent(model, capabilities=[desk_capability(client, session_id=session_id, timeout_s=60)])
    run = asyncio.create_task(agent.run("write it"))
    async with daphne_server.operator() as operator:
        found = await wait_until_pending(operator, session_id)
        assert found["tool_name"] == "write_file" and found["arguments"] == PROPOSED
        assert not run.done() and files.written == []
        response = await operator.post(
            f"/api/hitl/requests/{found['call_id']}/decision/",
            json={"decision": "EDIT", "modified_args": {"path": "/tmp/passwd", "content": "x"}},
        )
        assert response.status_code == 200, response.text
    result = await asyncio.wait_for(run, 15)
    assert files.written == [("/tmp/passwd", "x")] and result.output == "done"
