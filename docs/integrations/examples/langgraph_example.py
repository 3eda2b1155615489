"""A LangGraph agent whose write_file tool waits on the event bus's approval desk.

Runs offline: LangChain's fake chat model plays the LLM (it asks to write /etc/motd, then answers).
Needs a running server and an `agents` API token:

    pip install './client[langgraph]'
    export EVENTBUS_URL=http://127.0.0.1:8000 EVENTBUS_TOKEN=...
    python docs/integrations/examples/langgraph_example.py

then decide on http://127.0.0.1:8000/hitl/ (approve, edit the path, or reject with a comment).
"""

import os
import uuid

from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from eventbus_client import HITLClient
from eventbus_client.langgraph import gated_tool


@tool
def write_file(path: str, content: str) -> str:
    """Write content to the file at path."""
    return f"(pretend) wrote {len(content)} bytes to {path}"


model = FakeMessagesListChatModel(
    responses=[
        AIMessage(
            content="",
            tool_calls=[
                {"name": "write_file", "args": {"path": "/etc/motd", "content": "hello"}, "id": "call_1"}
            ],
        ),
        AIMessage(content="All done."),
    ]
)

client = HITLClient(os.environ["EVENTBUS_URL"], os.environ["EVENTBUS_TOKEN"])
tools = [gated_tool(write_file, client, agent="langgraph-example", timeout_s=300)]

builder = StateGraph(MessagesState)
builder.add_node("agent", lambda state: {"messages": [model.invoke(state["messages"])]})
builder.add_node("tools", ToolNode(tools))
builder.add_edge(START, "agent")
builder.add_conditional_edges("agent", tools_condition)
builder.add_edge("tools", "agent")
graph = builder.compile(checkpointer=InMemorySaver())

if __name__ == "__main__":
    thread_id = f"langgraph-example-{uuid.uuid4().hex[:8]}"  # the session on /hitl/
    print(f"waiting for a decision on {os.environ['EVENTBUS_URL']}/hitl/ (session {thread_id}) ...")
    state = graph.invoke(
        {"messages": [HumanMessage("Write hello to /etc/motd")]}, {"configurable": {"thread_id": thread_id}}
    )
    answer = next(m for m in state["messages"] if isinstance(m, ToolMessage))
    print(f"the tool answered the model ({answer.status}): {answer.content}")
