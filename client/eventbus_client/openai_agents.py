"""The OpenAI Agents SDK: tool approvals answered by the event bus's approval desk.

The SDK pauses a run when a tool with `needs_approval` is called: the result carries `interruptions`
(`ToolApprovalItem`s), the caller approves or rejects each on the run's state and runs again with that
state. Here the desk answers:

- `resolve_interruptions(result, client, session_id=...)` sends each interruption to the desk, waits
  for the decisions and applies them: `state.approve(item)` when approved, `state.reject(item,
  rejection_message=...)` otherwise, the message (what the model reads as the tool's answer) naming the
  decision, who made it and the comment. Returns the state: `await Runner.run(agent, state)` resumes.
- `run_with_desk(agent, input, client, session_id=...)` runs, resolves and resumes until the run ends.
- `gate_tool(tool, client, session_id=...)` sets the tool's `needs_approval` to
  `desk_needs_approval(client, tool_name=..., session_id=...)`, a callable that asks the desk while
  the run goes on: an approval lets the tool run at once (the SDK hears "no approval needed"); any other
  outcome pauses the run as usual, and `resolve_interruptions` then applies the same decision (the
  desk's `call_id` is the same, so nobody is asked twice). Without it (`needs_approval=True`) every
  gated call pauses the run and is asked about by `resolve_interruptions`.

EDIT: the SDK cannot run an approved call with other arguments (approval is yes or no, and the calls it
runs are the model's). An edited decision therefore fails closed: the call is rejected and the model is
told the arguments the operator approved instead, so it can call the tool again with exactly those,
which is a new call and goes to the desk again. Operators who want the call to run as proposed approve
it without edits.

Needs `pip install 'eventbus-client[openai-agents]'`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from agents import Agent, FunctionTool, Runner, RunState
from agents.items import ToolApprovalItem

from .hitl import ApprovalDecision, HITLClient, HITLError

__all__ = [
    "desk_needs_approval",
    "gate_tool",
    "refusal_message",
    "resolve_interruptions",
    "run_with_desk",
]

SessionId = str | Callable[[], str]


def refusal_message(decision: ApprovalDecision, tool_name: str) -> str:
    """What the model is told in place of the result of a call the desk did not approve."""
    who = f" by {decision.decided_by}" if decision.decided_by else ""
    if decision.edited:
        text = (
            f"The call to {tool_name} was not run: {decision.decided_by or 'an operator'} approved it only "
            f"with the arguments {json.dumps(decision.arguments, sort_keys=True)}. Call {tool_name} again "
            "with exactly these arguments if they still serve the task."
        )
    elif decision.status == "expired":
        text = f"The call to {tool_name} was not run: its approval request expired without a decision."
    elif decision.status == "cancelled":
        text = f"The call to {tool_name} was not run: its approval request was cancelled{who}."
    else:
        text = f"The call to {tool_name} was not run: it was {decision.status}{who}."
    if decision.comment:
        text += f" Reason: {decision.comment}" if not decision.edited else f" Comment: {decision.comment}"
    return text


def _desk_call_id(session: str, call_id: str) -> str:
    """The desk's call_id for the model's call `call_id` in `session` (no /, ?, #; at most 255)."""
    joined = f"{session}:{call_id}"
    cleaned = re.sub(r"[/?#\s]", "_", joined)
    return cleaned if len(cleaned) <= 200 else "oa-" + hashlib.sha256(joined.encode()).hexdigest()


def _session(session_id: SessionId) -> str:
    return session_id() if callable(session_id) else session_id


def _arguments(raw: str | None) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError:
        return {"raw_arguments": raw}  # the operator sees what the model sent; the tool gets no edit
    return parsed if isinstance(parsed, dict) else {"arguments": parsed}


def desk_needs_approval(
    client: HITLClient,
    *,
    tool_name: str,
    session_id: SessionId,
    agent: str = "",
    reason: str = "",
    timeout_s: float | None = None,
    on_expire: str | None = None,
) -> Callable[[Any, dict[str, Any], str], Awaitable[bool]]:
    """A `needs_approval` for the tool `tool_name` that asks the desk and waits (see `gate_tool`).

    Returns False (run it) only when the desk approved the call without edits; True (pause the run for
    `resolve_interruptions`) on any other decision, and when the desk cannot be reached.
    """

    async def needs_approval(context: Any, arguments: dict[str, Any], call_id: str) -> bool:
        try:
            decision = await client.request_approval(
                tool_name=tool_name,
                arguments=arguments,
                session_id=_session(session_id),
                call_id=_desk_call_id(_session(session_id), call_id),
                reason=reason,
                agent=agent,
                timeout_s=timeout_s,
                on_expire=on_expire,
            )
        except (HITLError, TypeError, ValueError):
            return True  # fail closed: the run pauses, and resolve_interruptions asks again
        return not (decision.approved and not decision.edited)

    return needs_approval


def gate_tool(
    tool: FunctionTool,
    client: HITLClient,
    *,
    session_id: SessionId,
    agent: str = "",
    reason: str = "",
    timeout_s: float | None = None,
    on_expire: str | None = None,
) -> FunctionTool:
    """Make `tool` (a `@function_tool`) wait on the desk while the run goes on; returns the same tool.

    Its `needs_approval` becomes `desk_needs_approval(...)`: approved calls run at once, and any other
    decision pauses the run for `resolve_interruptions` (or `run_with_desk`) to apply.
    """
    tool.needs_approval = desk_needs_approval(
        client,
        tool_name=tool.name,
        session_id=session_id,
        agent=agent,
        reason=reason,
        timeout_s=timeout_s,
        on_expire=on_expire,
    )
    return tool


async def resolve_interruptions(
    result: Any,
    client: HITLClient,
    *,
    session_id: SessionId,
    agent: str = "",
    reason: str = "",
    timeout_s: float | None = None,
    on_expire: str | None = None,
) -> RunState[Any, Any]:
    """Send each pending approval of `result` (a run result or a `RunState`) to the desk and apply
    the decisions; returns the state to resume with `Runner.run(agent, state)`.

    Raises what the client raises (`HITLUnavailable`, `HITLError`, `ApprovalTimeout`) when a decision
    cannot be had; nothing is approved then. Calling again waits on the same requests.
    """
    state: RunState[Any, Any] = result.to_state() if hasattr(result, "to_state") else result
    for item in state.get_interruptions():
        decision = await client.request_approval(
            **_request(item, session_id, agent, reason, timeout_s, on_expire)
        )
        if decision.approved and not decision.edited:
            state.approve(item)
        else:
            state.reject(item, rejection_message=refusal_message(decision, _name(item)))
    return state


async def run_with_desk(
    agent: Agent[Any],
    input: Any,
    client: HITLClient,
    *,
    session_id: SessionId,
    max_rounds: int = 50,
    desk_agent: str = "",
    reason: str = "",
    timeout_s: float | None = None,
    on_expire: str | None = None,
    **run_options: Any,
) -> Any:
    """`Runner.run(agent, input)`, answering every pause from the desk until the run ends.

    `desk_agent` is the `agent` field of the approval requests (default: the agent's name).
    """
    result = await Runner.run(agent, input, **run_options)
    for _ in range(max_rounds):
        if not result.interruptions:
            return result
        state = await resolve_interruptions(
            result,
            client,
            session_id=session_id,
            agent=desk_agent or agent.name,
            reason=reason,
            timeout_s=timeout_s,
            on_expire=on_expire,
        )
        result = await Runner.run(agent, state, **run_options)
    raise RuntimeError(f"the run still pauses after {max_rounds} rounds of approvals")


def _name(item: ToolApprovalItem) -> str:
    return item.tool_name or item.name or "tool"


def _request(
    item: ToolApprovalItem,
    session_id: SessionId,
    agent: str,
    reason: str,
    timeout_s: float | None,
    on_expire: str | None,
) -> dict[str, Any]:
    session = _session(session_id)
    call_id = item.call_id
    if not call_id:
        raise HITLError(None, "no_call_id", f"the approval of {_name(item)} has no call id to key it by")
    return {
        "tool_name": _name(item),
        "arguments": _arguments(item.arguments),
        "session_id": session,
        "call_id": _desk_call_id(session, call_id),
        "reason": reason,
        "agent": agent or getattr(item.agent, "name", "") or "",
        "timeout_s": timeout_s,
        "on_expire": on_expire,
    }
