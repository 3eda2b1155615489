"""An OpenAI Agents SDK agent whose write_file tool waits on the event bus's approval desk.

Runs offline: the SDK's ScriptedModel plays the LLM (it asks to write /etc/motd, then answers), and
tracing is off. Needs a running server and an `agents` API token:

    pip install './client[openai-agents]'
    export EVENTBUS_URL=http://127.0.0.1:8000 EVENTBUS_TOKEN=...
    python docs/integrations/examples/openai_agents_example.py

then decide on http://127.0.0.1:8000/hitl/ (approve or reject; an edit comes back to the model as a
rejection naming the arguments you approved).
"""

import asyncio
import os
import uuid

from agents import Agent, function_tool, set_tracing_disabled
from agents.testing import ScriptedModel, assistant_message, function_call

from eventbus_client import HITLClient
from eventbus_client.openai_agents import run_with_desk

set_tracing_disabled(True)


@function_tool(needs_approval=True)
def write_file(path: str, content: str) -> str:
    """Write content to the file at path."""
    return f"(pretend) wrote {len(content)} bytes to {path}"


model = ScriptedModel(
    [
        [function_call("write_file", {"path": "/etc/motd", "content": "hello"}, call_id="call_1")],
        [assistant_message("All done.")],
    ]
)
agent = Agent(name="openai-agents-example", model=model, tools=[write_file])


async def main() -> None:
    client = HITLClient(os.environ["EVENTBUS_URL"], os.environ["EVENTBUS_TOKEN"])
    session_id = f"openai-agents-example-{uuid.uuid4().hex[:8]}"  # the session on /hitl/
    print(f"waiting for a decision on {os.environ['EVENTBUS_URL']}/hitl/ (session {session_id}) ...")
    result = await run_with_desk(
        agent, "Write hello to /etc/motd", client, session_id=session_id, timeout_s=300
    )
    last_call = model.last_call
    assert last_call is not None
    (answer,) = [i for i in last_call.input if i.get("type") == "function_call_output"]
    print(f"the tool answered the model: {answer['output']}")
    print(f"final output: {result.final_output}")


if __name__ == "__main__":
    asyncio.run(main())
