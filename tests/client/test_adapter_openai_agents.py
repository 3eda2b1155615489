"""eventbus_client.openai_agents: the Agents SDK's tool approvals answered by the desk.

An agent driven by the SDK's own ScriptedModel (no network, no key) against a fake desk
(httpx.MockTransport), and against Daphne with an operator deciding over the REST API.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

pytest.importorskip("agents")

from agents import Agent, Runner, function_tool, set_tracing_disabled  # noqa: E402
from agents.testing import ScriptedModel, assistant_message, function_call  # noqa: E402

from eventbus_client import HITLClient  # noqa: E402
from eventbus_client.openai_agents import gate_tool, resolve_interruptions, run_with_desk  # noqa: E402
from tests.hitl.test_client import (  # noqa: E402
    APPROVE,
    EXPIRED,
    REJECT,
    FakeServer,
    edit,
    wait_until_pending,
)

set_tracing_disabled(True)

PROPOSED = {"path": "/etc/passwd", "content": "x"}


class Files:
    def __init__(self) -> None:
        self.written: list[tuple[str, str]] = []

    def tool(self, needs_approval: Any = True) -> Any:
        @function_tool(needs_approval=needs_approval)
        def write_file(path: str, content: str) -> str:
            """Write content to the file at path."""
            self.written.append((path, content))
            return f"wrote {len(content)} bytes to {path}"

        return write_file


def scripted(call_id: str = "call_1") -> ScriptedModel:
    return ScriptedModel(
        [[function_call("write_file", PROPOSED, call_id=call_id)], [assistant_message("done")]]
    )


def tool_output(model: ScriptedModel) -> str:
    """What the model was given as the tool's answer on its last turn."""
    (output,) = [item for item in model.last_call.input if item.get("type") == "function_call_output"]
    return str(output["output"])


async def test_approved_the_run_resumes_and_the_tool_runs():
    desk, files, model = FakeServer(decision=APPROVE), Files(), scripted()
    agent = Agent(name="writer", model=model, tools=[files.tool()])
    result = await Runner.run(agent, "write it")
    assert len(result.interruptions) == 1 and files.written == []
    state = await resolve_interruptions(result, desk.client(), session_id="s-1", timeout_s=60)
    result = await Runner.run(agent, state)
    assert files.written == [("/etc/passwd", "x")]
    assert result.final_output == "done" and tool_output(model) == "wrote 1 bytes to /etc/passwd"
    (asked,) = desk.posted()
    assert asked["tool_name"] == "write_file" and asked["arguments"] == PROPOSED
    assert (asked["session_id"], asked["call_id"], asked["agent"]) == ("s-1", "s-1:call_1", "writer")


@pytest.mark.parametrize(
    ("decision", "expected"),
    [
        (REJECT, "The call to write_file was not run: it was rejected by olga. Reason: not this file"),
        (EXPIRED, "its approval request expired without a decision"),
    ],
)
async def test_refused_the_tool_never_runs_and_the_model_reads_why(decision, expected):
    desk, files, model = FakeServer(decision=decision), Files(), scripted()
    agent = Agent(name="writer", model=model, tools=[files.tool()])
    result = await run_with_desk(agent, "write it", desk.client(), session_id="s-2")
    assert files.written == [] and result.final_output == "done"
    assert expected in tool_output(model)


async def test_an_edit_is_refused_and_the_model_is_told_the_approved_arguments():
    desk, files, model = FakeServer(decision=edit(path="/tmp/passwd", content="x")), Files(), scripted()
    agent = Agent(name="writer", model=model, tools=[files.tool()])
    await run_with_desk(agent, "write it", desk.client(), session_id="s-3")
    assert files.written == []  # the SDK cannot run other arguments: fail closed
    answer = tool_output(model)
    assert "olga approved it only with the arguments" in answer
    assert json.dumps({"content": "x", "path": "/tmp/passwd"}, sort_keys=True) in answer


async def test_a_gated_tool_asks_while_the_run_goes_on():
    desk, files, model = FakeServer(decision=APPROVE), Files(), scripted()
    client = desk.client()
    agent = Agent(name="writer", model=model, tools=[gate_tool(files.tool(), client, session_id="s-4")])
    result = await Runner.run(agent, "write it")
    assert result.interruptions == [] and result.final_output == "done"
    assert files.written == [("/etc/passwd", "x")]
    assert desk.posted()[0]["call_id"] == "s-4:call_1"


async def test_a_gated_tool_refused_pauses_and_the_same_decision_is_applied():
    desk, files, model = FakeServer(decision=REJECT), Files(), scripted()
    client = desk.client()
    agent = Agent(name="writer", model=model, tools=[gate_tool(files.tool(), client, session_id="s-5")])
    result = await Runner.run(agent, "write it")
    assert len(result.interruptions) == 1 and files.written == []
    result = await Runner.run(agent, await resolve_interruptions(result, client, session_id="s-5"))
    assert files.written == [] and "rejected by olga" in tool_output(model)
    assert desk.creations == 1  # one request: the second ask got the recorded decision


# End to end: Daphne, an operator deciding while resolve_interruptions waits


@pytest.mark.parametrize(("verdict", "written"), [("APPROVE", [("/etc/passwd", "x")]), ("REJECT", [])])
async def test_live_the_operators_decision_is_applied(daphne_server, verdict, written):
    files, model = Files(), scripted(call_id=f"call_{uuid.uuid4().hex[:6]}")
    client = HITLClient(daphne_server.base_url, daphne_server.agent_token)
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    agent = Agent(name="writer", model=model, tools=[files.tool()])
    run = asyncio.create_task(run_with_desk(agent, "write it", client, session_id=session_id, timeout_s=60))
    async with daphne_server.operator() as operator:
        found = await wait_until_pending(operator, session_id)
        assert found["tool_name"] == "write_file" and found["arguments"] == PROPOSED
        assert found["agent"] == "writer"
        response = await operator.post(
            f"/api/hitl/requests/{found['call_id']}/decision/",
            json={"decision": verdict, "comment": "checked"},
        )
        assert response.status_code == 200, response.text
    result = await asyncio.wait_for(run, 15)
    assert files.written == written and result.final_output == "done"
    if verdict == "REJECT":
        assert "rejected by op1. Reason: checked" in tool_output(model)
