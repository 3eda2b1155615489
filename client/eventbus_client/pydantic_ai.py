"""Pydantic AI: deferred tool approvals answered by the event bus's approval desk.

A tool registered with `requires_approval=True` (or raising `ApprovalRequired`) is deferred: the run
ends with `DeferredToolRequests` as its output, and the next run takes `DeferredToolResults`. Here the
desk answers:

- `resolve_deferred(requests, client, session_id=...)` sends each call in `requests.approvals` to the
  desk, waits for the decisions and returns the `DeferredToolResults`: `ToolApproved()` when approved,
  `ToolApproved(override_args=...)` with the operator's arguments after an EDIT (Pydantic AI validates
  them against the tool's schema and runs the tool with them), `ToolDenied(message)` otherwise, the
  message (what the model reads as the tool's answer) naming the decision, who made it and the comment.
  Resume with `agent.run(message_history=result.all_messages(), deferred_tool_results=results)`.
- `desk_capability(client, session_id=...)` does the same inside the run: a `HandleDeferredToolCalls`
  capability, so the run waits on the desk instead of ending (`Agent(..., capabilities=[...])`).

Only approvals are answered; calls deferred for external execution or questions are left alone.
The desk's `call_id` is the session and the model's tool call id, so answering the same requests again
(after a crash) waits on the same approval requests instead of asking twice.

Needs `pip install 'eventbus-client[pydantic-ai]'` (pydantic-ai-slim).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

from pydantic_ai.capabilities import HandleDeferredToolCalls
from pydantic_ai.messages import ToolCallPart
from pydantic_ai.tools import DeferredToolRequests, DeferredToolResults, RunContext, ToolApproved, ToolDenied

from .hitl import ApprovalDecision, HITLClient

__all__ = ["desk_capability", "refusal_message", "resolve_deferred"]

SessionId = str | Callable[[], str]


def refusal_message(decision: ApprovalDecision, tool_name: str) -> str:
    """What the model is told in place of the result of a call the desk did not approve."""
    who = f" by {decision.decided_by}" if decision.decided_by else ""
    if decision.status == "expired":
        text = f"The call to {tool_name} was not run: its approval request expired without a decision."
    elif decision.status == "cancelled":
        text = f"The call to {tool_name} was not run: its approval request was cancelled{who}."
    else:
        text = f"The call to {tool_name} was not run: it was {decision.status}{who}."
    if decision.comment:
        text += f" Reason: {decision.comment}"
    return text


def _desk_call_id(session: str, tool_call_id: str) -> str:
    """The desk's call_id for the model's call in `session` (no /, ?, #; at most 255 characters)."""
    joined = f"{session}:{tool_call_id}"
    cleaned = re.sub(r"[/?#\s]", "_", joined)
    return cleaned if len(cleaned) <= 200 else "pa-" + hashlib.sha256(joined.encode()).hexdigest()


def _request(
    part: ToolCallPart,
    session: str,
    agent: str,
    reason: str,
    timeout_s: float | None,
    on_expire: str | None,
) -> dict[str, Any]:
    return {
        "tool_name": part.tool_name,
        "arguments": part.args_as_dict(),
        "session_id": session,
        "call_id": _desk_call_id(session, part.tool_call_id),
        "reason": reason,
        "agent": agent,
        "timeout_s": timeout_s,
        "on_expire": on_expire,
    }


def _result(decision: ApprovalDecision, tool_name: str) -> ToolApproved | ToolDenied:
    if not decision.approved:
        return ToolDenied(refusal_message(decision, tool_name))
    if decision.edited:
        return ToolApproved(override_args=dict(decision.arguments))
    return ToolApproved()


async def resolve_deferred(
    requests: DeferredToolRequests,
    client: HITLClient,
    *,
    session_id: SessionId,
    agent: str = "",
    reason: str = "",
    timeout_s: float | None = None,
    on_expire: str | None = None,
) -> DeferredToolResults:
    """The desk's decisions on `requests.approvals`, as `DeferredToolResults` for the next run.

    Raises what the client raises (`HITLUnavailable`, `HITLError`, `ApprovalTimeout`) when a decision
    cannot be had: nothing is approved then, and calling again waits on the same requests.
    """
    session = session_id() if callable(session_id) else session_id
    approvals: dict[str, Any] = {}
    answered_by: dict[str, str] = {}
    for part in requests.approvals:
        request = _request(part, session, agent, reason, timeout_s, on_expire)
        decision = await client.request_approval(**request)
        approvals[part.tool_call_id] = _result(decision, part.tool_name)
        answered_by[part.tool_call_id] = decision.decided_by or decision.channel or decision.status
    return DeferredToolResults(approvals=approvals, answered_by=answered_by)


def desk_capability(
    client: HITLClient,
    *,
    session_id: SessionId,
    agent: str = "",
    reason: str = "",
    timeout_s: float | None = None,
    on_expire: str | None = None,
) -> HandleDeferredToolCalls[Any]:
    """A capability that answers a run's approval requests from the desk while the run waits."""

    async def handler(ctx: RunContext[Any], requests: DeferredToolRequests) -> DeferredToolResults | None:
        if not requests.approvals:
            return None  # external calls and questions: not the desk's
        return await resolve_deferred(
            requests,
            client,
            session_id=session_id,
            agent=agent,
            reason=reason,
            timeout_s=timeout_s,
            on_expire=on_expire,
        )

    return HandleDeferredToolCalls(handler=handler)
