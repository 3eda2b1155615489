"""A Pydantic AI agent whose write_file tool (requires_approval=True) waits on the approval desk.

Runs offline: a FunctionModel plays the LLM (it asks to write /etc/motd, then repeats what the tool
answered). Needs a running server and an `agents` API token:

    pip install './client[pydantic-ai]'
    export EVENTBUS_URL=http://127.0.0.1:8000 EVENTBUS_TOKEN=...
    python docs/integrations/examples/pydantic_ai_example.py

then decide on http://127.0.0.1:8000/hitl/ (approve, edit the path, or reject with a comment).
"""

import os
import uuid

from pydantic_ai import Agent
from pydantic_ai.messages import ModelRequest, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from eventbus_client import HITLClient
from eventbus_client.pydantic_ai import desk_capability


def llm(messages: list, info: AgentInfo) -> ModelResponse:
    """Call write_file once; then answer with what the tool said."""
    returns = [
        p for m in messages if isinstance(m, ModelRequest) for p in m.parts if isinstance(p, ToolReturnPart)
    ]
    if not returns:
        return ModelResponse(parts=[ToolCallPart("write_file", {"path": "/etc/motd", "content": "hello"})])
    return ModelResponse(parts=[TextPart(f"The tool said: {returns[0].content}")])


client = HITLClient(os.environ["EVENTBUS_URL"], os.environ["EVENTBUS_TOKEN"])
session_id = f"pydantic-ai-example-{uuid.uuid4().hex[:8]}"  # the session on /hitl/
agent = Agent(
    FunctionModel(llm),
    capabilities=[desk_capability(client, session_id=session_id, agent="pydantic-ai-example", timeout_s=300)],
)


@agent.tool_plain(requires_approval=True)
def write_file(path: str, content: str) -> str:
    """Write content to the file at path."""
    return f"(pretend) wrote {len(content)} bytes to {path}"


if __name__ == "__main__":
    print(f"waiting for a decision on {os.environ['EVENTBUS_URL']}/hitl/ (session {session_id}) ...")
    print(agent.run_sync("Write hello to /etc/motd").output)
