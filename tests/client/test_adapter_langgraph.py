"""eventbus_client.langgraph: a graph's tool calls wait on the desk.

A LangGraph graph driven by LangChain's fake chat model (no network, no key) against a fake desk
(httpx.MockTransport) for each decision, and against Daphne with an operator deciding over the REST API.
"""

from __future__ import annotations

import asyncio
import importlib
import uuid
from typing import Annotated, Any

import pytest

pytest.importorskip("langgraph")

from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel  # noqa: E402
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage  # noqa: E402
from langchain_core.runnables import RunnableConfig  # noqa: E402
from langchain_core.tools import InjectedToolCallId, tool  # noqa: E402
from langgraph.checkpoint.memory import InMemorySaver  # noqa: E402
from langgraph.graph import END, START, MessagesState, StateGraph  # noqa: E402
from langgraph.prebuilt import ToolNode, tools_condition  # noqa: E402
from langgraph.types import interrupt  # noqa: E402

from eventbus_client import HITLClient  # noqa: E402
from eventbus_client.langgraph import (  # noqa: E402
    ainvoke_with_desk,
    gated_tool,
    invoke_with_desk,
    resolve_interrupts,
)
from tests.hitl.test_client import (  # noqa: E402
    APPROVE,
    CANCELLED,
    EXPIRED,
    REJECT,
    FakeServer,
    edit,
    wait_until_pending,
)

# The fake desk (tests/hitl/test_client.py): every request is decided as `decision` on its first poll.


def desk(decision: dict[str, Any]) -> FakeServer:
    return FakeServer(decision=decision)


# A graph: a fake model that calls write_file once, then answers; the tool node runs the gated tool


class ToolCallingFake(FakeMessagesListChatModel):
    """The fake chat model, with bind_tools (create_agent binds the tools) and the inputs it saw."""

    seen: list[list[BaseMessage]] = []

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Any:
        self.seen.append(list(messages))
        return super()._generate(messages, *args, **kwargs)


def fake_model(arguments: dict[str, Any]) -> ToolCallingFake:
    call = {"name": "write_file", "args": arguments, "id": "call_1", "type": "tool_call"}
    return ToolCallingFake(
        responses=[AIMessage(content="", tool_calls=[call]), AIMessage(content="done")], seen=[]
    )


class Files:
    """The tool's side effects."""

    def __init__(self) -> None:
        self.written: list[tuple[str, str]] = []

    def tool(self) -> Any:
        @tool
        def write_file(path: str, content: str) -> str:
            """Write content to the file at path."""
            self.written.append((path, content))
            return f"wrote {len(content)} bytes to {path}"

        return write_file


def tool_graph(model: ToolCallingFake, tools: list[Any]) -> Any:
    builder = StateGraph(MessagesState)
    builder.add_node("agent", lambda state: {"messages": [model.invoke(state["messages"])]})
    builder.add_node("tools", ToolNode(tools))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile(checkpointer=InMemorySaver())


def thread() -> RunnableConfig:
    return {"configurable": {"thread_id": f"t-{uuid.uuid4().hex[:8]}"}}


def tool_message(state: dict[str, Any]) -> ToolMessage:
    (message,) = [m for m in state["messages"] if isinstance(m, ToolMessage)]
    return message


PROPOSED = {"path": "/etc/passwd", "content": "x"}


def test_approved_the_tool_runs_with_the_proposed_arguments():
    server, files, model = desk(APPROVE), Files(), fake_model(PROPOSED)
    config = thread()
    graph = tool_graph(model, [gated_tool(files.tool(), server.client(), agent="writer", timeout_s=60)])
    state = graph.invoke({"messages": [HumanMessage("write it")]}, config)
    assert files.written == [("/etc/passwd", "x")]
    assert tool_message(state).content == "wrote 1 bytes to /etc/passwd"
    (asked,) = server.posted()
    assert asked["tool_name"] == "write_file" and asked["arguments"] == PROPOSED
    # The session is the thread; the call id is the model's, within it: asking again resumes.
    thread_id = config["configurable"]["thread_id"]
    assert asked["session_id"] == thread_id and asked["call_id"] == f"{thread_id}:call_1"
    assert (asked["agent"], asked["timeout_s"]) == ("writer", 60)
    assert state["messages"][-1].content == "done"


async def test_edited_the_tool_runs_with_the_operators_arguments_and_the_model_is_told():
    server, files, model = (
        desk(edit(path="/tmp/passwd", content="x")),
        Files(),
        fake_model(PROPOSED),
    )
    graph = tool_graph(model, [gated_tool(files.tool(), server.client(), session_id="s-edit")])
    state = await graph.ainvoke({"messages": [HumanMessage("write it")]}, thread())
    assert files.written == [("/tmp/passwd", "x")]
    answer = tool_message(state)
    assert answer.status == "success" and answer.tool_call_id == "call_1"
    assert "olga changed the arguments" in answer.content and '"/tmp/passwd"' in answer.content
    assert answer.content.endswith("wrote 1 bytes to /tmp/passwd")
    assert server.posted()[0]["session_id"] == "s-edit"


@pytest.mark.parametrize(
    ("decision", "expected"),
    [
        (REJECT, "The call to write_file was not run: it was rejected by olga. Reason: not this file"),
        (EXPIRED, "its approval request expired without a decision"),
        (CANCELLED, "its approval request was cancelled"),
    ],
)
def test_refused_the_tool_never_runs_and_the_model_reads_why(decision, expected):
    server, files, model = desk(decision), Files(), fake_model(PROPOSED)
    graph = tool_graph(model, [gated_tool(files.tool(), server.client())])
    state = graph.invoke({"messages": [HumanMessage("write it")]}, thread())
    assert files.written == []
    answer = tool_message(state)
    assert answer.status == "error" and expected in answer.content
    # The model's next turn reads the refusal as the tool's answer to its call.
    last_input = model.seen[-1]
    assert isinstance(last_input[-1], ToolMessage) and last_input[-1].content == answer.content


def test_an_edit_the_tool_cannot_take_never_runs_it():
    server, files, model = desk(edit(path=["not", "a", "path"])), Files(), fake_model(PROPOSED)
    graph = tool_graph(model, [gated_tool(files.tool(), server.client())])
    state = graph.invoke({"messages": [HumanMessage("write it")]}, thread())
    assert files.written == []
    answer = tool_message(state)
    assert answer.status == "error" and "do not fit the tool" in answer.content


def test_arguments_langgraph_injects_are_neither_sent_nor_editable():
    seen: list[tuple[str, str]] = []

    @tool
    def notify(message: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> str:
        """Send a message."""
        seen.append((message, tool_call_id))
        return "sent"

    server = desk(edit(message="hello, politely"))
    gated = gated_tool(notify, server.client(), session_id="s-inject")
    result = gated.invoke({"type": "tool_call", "id": "call_9", "name": "notify", "args": {"message": "hi"}})
    assert server.posted()[0]["arguments"] == {"message": "hi"}
    assert seen == [("hello, politely", "call_9")] and result.tool_call_id == "call_9"


# Interrupts: LangChain's HumanInTheLoopMiddleware and a graph's own interrupt()


def hitl_agent(model: ToolCallingFake, files: Files, mode: str) -> Any:
    # Imported by name: mypy crashes analysing langchain's own modules (langchain 1.5, mypy 1.20).
    agents = importlib.import_module("langchain.agents")
    middleware = importlib.import_module("langchain.agents.middleware")
    create_agent, HumanInTheLoopMiddleware = agents.create_agent, middleware.HumanInTheLoopMiddleware
    return create_agent(
        model,
        tools=[files.tool()],
        middleware=[HumanInTheLoopMiddleware(interrupt_on={"write_file": True}, interrupt_mode=mode)],
        checkpointer=InMemorySaver(),
    )


@pytest.mark.parametrize("mode", ["batched", "per_call"])
@pytest.mark.parametrize(
    ("decision", "written", "answer"),
    [
        (APPROVE, [("/etc/passwd", "x")], "wrote 1 bytes to /etc/passwd"),
        (edit(path="/tmp/passwd", content="x"), [("/tmp/passwd", "x")], "wrote 1 bytes to /tmp/passwd"),
        (REJECT, [], "rejected by olga. Reason: not this file"),
    ],
)
def test_the_middlewares_interrupts_are_answered_from_the_desk(mode, decision, written, answer):
    pytest.importorskip("langchain.agents.middleware")
    server, files, model = desk(decision), Files(), fake_model(PROPOSED)
    agent, config = hitl_agent(model, files, mode), thread()
    agent.invoke({"messages": [HumanMessage("write it")]}, config)
    assert files.written == []  # paused before the tool
    command = resolve_interrupts(agent, config, server.client(), agent="writer")
    assert command is not None
    state = agent.invoke(command, config)
    assert files.written == written
    assert answer in str(tool_message(state).content)
    (asked,) = server.posted()
    assert asked["tool_name"] == "write_file" and asked["arguments"] == PROPOSED
    assert asked["agent"] == "writer" and asked["session_id"] == config["configurable"]["thread_id"]
    assert resolve_interrupts(agent, config, server.client()) is None  # nothing pauses any more


def test_invoke_with_desk_answers_every_pause_until_the_run_ends():
    pytest.importorskip("langchain.agents.middleware")
    server, files, model = desk(APPROVE), Files(), fake_model(PROPOSED)
    agent = hitl_agent(model, files, "batched")
    state = invoke_with_desk(agent, {"messages": [HumanMessage("write it")]}, thread(), server.client())
    assert files.written == [("/etc/passwd", "x")] and state["messages"][-1].content == "done"


async def test_a_graphs_own_interrupt_gets_the_decision_in_the_plain_shape():
    answers: list[dict[str, Any]] = []

    def review(state: MessagesState) -> dict[str, Any]:
        answers.append(interrupt({"tool_name": "deploy", "arguments": {"env": "prod"}, "reason": "release"}))
        return {"messages": [AIMessage(content="reviewed")]}

    builder = StateGraph(MessagesState)
    builder.add_node("review", review)
    builder.add_edge(START, "review")
    builder.add_edge("review", END)
    graph = builder.compile(checkpointer=InMemorySaver())
    server = desk(edit(env="staging"))
    await ainvoke_with_desk(graph, {"messages": [HumanMessage("ship")]}, thread(), server.client())
    answer = answers[-1]
    assert answer["approved"] is True and answer["status"] == "edited"
    assert answer["arguments"] == {"env": "staging"} and answer["decided_by"] == "olga"
    assert server.posted()[0]["reason"] == "release"


def test_an_interrupt_the_desk_cannot_read_is_not_answered():
    def ask(state: MessagesState) -> dict[str, Any]:
        interrupt("what is your name?")
        return {}

    builder = StateGraph(MessagesState)
    builder.add_node("ask", ask)
    builder.add_edge(START, "ask")
    graph = builder.compile(checkpointer=InMemorySaver())
    server = desk(APPROVE)
    config = thread()
    graph.invoke({"messages": [HumanMessage("hello")]}, config)
    with pytest.raises(ValueError, match="cannot answer"):
        resolve_interrupts(graph, config, server.client())
    assert server.posted() == []


# End to end: Daphne, the graph waiting in its tool node, an operator deciding


async def test_live_the_operators_edit_reaches_the_tool(daphne_server):
    files, model = Files(), fake_model(PROPOSED)
    client = HITLClient(daphne_server.base_url, daphne_server.agent_token)
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    graph = tool_graph(model, [gated_tool(files.tool(), client, session_id=session_id, timeout_s=60)])
    run = asyncio.create_task(graph.ainvoke({"messages": [HumanMessage("write it")]}, thread()))
    async with daphne_server.operator() as operator:
        found = await wait_until_pending(operator, session_id)
        assert found["tool_name"] == "write_file" and found["arguments"] == PROPOSED
        assert found["call_id"] == f"{session_id}:call_1"
        assert not run.done() and files.written == []
        response = await operator.post(
            f"/api/hitl/requests/{found['call_id']}/decision/",
            json={
                "decision": "EDIT",
                "modified_args": {"path": "/tmp/passwd", "content": "x"},
                "comment": "tmp",
            },
        )
        assert response.status_code == 200, response.text
    state = await asyncio.wait_for(run, 15)
    assert files.written == [("/tmp/passwd", "x")]
    assert "op1 changed the arguments" in tool_message(state).content
