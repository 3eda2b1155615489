"""LangGraph and LangChain: tool calls wait on the event bus's approval desk.

Two ways in, both failing closed (nothing runs unless a person, or a rule of the desk, approved it):

- `gated_tool(tool, client)` wraps a LangChain tool so that a graph's `ToolNode` (or any caller with a
  tool call) asks the desk before running it. Approved: the tool runs with the decided arguments (the
  operator's after an EDIT, and the model is told its call was changed). Rejected, expired or
  cancelled: the tool does not run, and its answer (the `ToolMessage`, status "error") tells the model
  who refused it and why.
- `resolve_interrupts(graph, config, client)` (and `aresolve_interrupts`) answers the pending
  `interrupt()`s of a paused thread from the desk and returns the `Command(resume=...)` to continue
  with; `invoke_with_desk` / `ainvoke_with_desk` loop until the run no longer pauses. It understands
  LangChain's `HumanInTheLoopMiddleware` (both `interrupt_mode="batched"` and `"per_call"`), LangGraph's
  Agent Inbox `HumanInterrupt` lists, and a plain shape for your own `interrupt()` calls:
  `{"tool_name": ..., "arguments": {...}}` (or `"name"`/`"args"`), resumed with
  `{"approved": bool, "status": ..., "arguments": {...}, "comment": ..., "decided_by": ...}`.

The desk's `call_id` is derived from the thread (or `session_id`) and the model's tool call id (or the
paused checkpoint and interrupt), so running the same step again after a crash waits on the same
request, and gets the same decision, instead of asking twice.

Needs `pip install 'eventbus-client[langgraph]'` (langgraph and langchain-core).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from langchain_core.messages import ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool
from langgraph.types import Command
from pydantic import BaseModel, ConfigDict, ValidationError

from .hitl import ApprovalDecision, HITLClient

__all__ = [
    "GatedTool",
    "ainvoke_with_desk",
    "aresolve_interrupts",
    "gated_tool",
    "invoke_with_desk",
    "refusal_message",
    "resolve_interrupts",
]

SessionId = str | Callable[[], str] | None


# Shared by both ways in


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


def edit_notice(decision: ApprovalDecision) -> str:
    """What the model is told before the result of a call an operator changed."""
    who = decision.decided_by or "an operator"
    text = (
        f"Note: {who} changed the arguments of this call before it ran; it ran with "
        f"{json.dumps(decision.arguments, sort_keys=True)}, not with the arguments you proposed."
    )
    if decision.comment:
        text += f" Comment: {decision.comment}"
    return text


def _desk_call_id(*parts: str) -> str:
    """A call_id for the desk from stable parts: readable when short, a digest when long.

    The desk's call_ids are global and part of URLs: no /, ?, # or whitespace, at most 255 characters.
    """
    joined = ":".join(parts)
    cleaned = re.sub(r"[/?#\s]", "_", joined)
    if len(cleaned) <= 200:
        return cleaned
    return "lg-" + hashlib.sha256(joined.encode()).hexdigest()


def _thread_id(config: Mapping[str, Any] | None) -> str | None:
    configurable = (config or {}).get("configurable") or {}
    thread = configurable.get("thread_id")
    return str(thread) if thread is not None else None


def _session(session_id: SessionId, config: RunnableConfig | None) -> str:
    if callable(session_id):
        return session_id()
    if session_id:
        return session_id
    thread = _thread_id(config)
    if thread is None:
        raise ValueError("no session_id given and the graph's config has no thread_id to use as one")
    return thread


# The tool wrapper


class GatedTool(BaseTool):
    """A LangChain tool that runs `tool` only with the desk's approval (build it with `gated_tool`)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    tool: BaseTool
    client: HITLClient
    session_id: SessionId = None
    agent: str = ""
    reason: str = ""
    timeout_s: float | None = None
    on_expire: str | None = None
    notify_edits: bool = True

    def _run(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - invoke is overridden
        raise NotImplementedError("GatedTool runs through invoke/ainvoke")

    # What is sent and what runs

    def _split(self, tool_input: Any) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
        """(tool call id, the arguments the model proposed, the injected ones nobody may edit)."""
        tool_call_id: str | None = None
        if isinstance(tool_input, Mapping) and tool_input.get("type") == "tool_call":
            tool_call_id = tool_input.get("id")
            args = tool_input.get("args") or {}
        else:
            args = tool_input
        if isinstance(args, str):
            # A single string input: the tool's only parameter.
            names = list(self.tool.args)
            if len(names) != 1:
                raise ValueError(f"{self.name} takes {names}; pass its arguments as a dict")
            args = {names[0]: args}
        if not isinstance(args, Mapping):
            raise TypeError(f"the arguments of {self.name} must be a dict, not {type(args).__name__}")
        visible = _visible_arguments(self.tool)
        injected = set(self.tool.args) - visible if visible is not None else set()
        proposed = {k: v for k, v in args.items() if k not in injected}
        return tool_call_id, proposed, {k: v for k, v in args.items() if k in injected}

    def _request(
        self, tool_call_id: str | None, proposed: dict[str, Any], config: RunnableConfig | None
    ) -> dict[str, Any]:
        session = _session(self.session_id, config)
        call_id = _desk_call_id(session, tool_call_id) if tool_call_id else str(uuid.uuid4())
        return {
            "tool_name": self.name,
            "arguments": proposed,
            "session_id": session,
            "call_id": call_id,
            "reason": self.reason,
            "agent": self.agent,
            "timeout_s": self.timeout_s,
            "on_expire": self.on_expire,
        }

    def _refused(self, tool_call_id: str | None, text: str) -> Any:
        if tool_call_id is None:
            return text
        return ToolMessage(content=text, name=self.name, tool_call_id=tool_call_id, status="error")

    def _decided_input(
        self, tool_call_id: str | None, decision: ApprovalDecision, injected: dict[str, Any]
    ) -> tuple[Any, Any]:
        """(the input to run the tool with, None), or (None, the answer when it must not run)."""
        if not decision.approved:
            return None, self._refused(tool_call_id, refusal_message(decision, self.name))
        arguments = dict(decision.arguments)
        if decision.edited:
            problem = _edit_problem(self.tool, arguments)
            if problem:
                who = decision.decided_by or "an operator"
                text = (
                    f"The call to {self.name} was not run: the arguments {who} approved do not fit "
                    f"the tool ({problem})."
                )
                return None, self._refused(tool_call_id, text)
        arguments.update(injected)
        if tool_call_id is None:
            return arguments, None
        return {"type": "tool_call", "id": tool_call_id, "name": self.tool.name, "args": arguments}, None

    def _finish(self, result: Any, decision: ApprovalDecision) -> Any:
        if not (decision.edited and self.notify_edits and isinstance(result, ToolMessage)):
            return result
        notice = edit_notice(decision)
        if isinstance(result.content, str):
            content: Any = f"{notice}\n\n{result.content}"
        else:
            content = [{"type": "text", "text": notice}, *result.content]
        return result.model_copy(update={"content": content, "name": self.name})

    # Runnable

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        tool_call_id, proposed, injected = self._split(input)
        decision = self.client.request_approval_sync(**self._request(tool_call_id, proposed, config))
        run_input, refused = self._decided_input(tool_call_id, decision, injected)
        if refused is not None:
            return refused
        return self._finish(self.tool.invoke(run_input, config, **kwargs), decision)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        tool_call_id, proposed, injected = self._split(input)
        decision = await self.client.request_approval(**self._request(tool_call_id, proposed, config))
        run_input, refused = self._decided_input(tool_call_id, decision, injected)
        if refused is not None:
            return refused
        return self._finish(await self.tool.ainvoke(run_input, config, **kwargs), decision)


def gated_tool(
    tool: BaseTool | Callable[..., Any],
    client: HITLClient,
    *,
    session_id: SessionId = None,
    agent: str = "",
    reason: str = "",
    timeout_s: float | None = None,
    on_expire: str | None = None,
    notify_edits: bool = True,
) -> GatedTool:
    """`tool` (a LangChain tool, or a function made into one) behind the approval desk.

    Each call becomes an approval request: `tool_name` is the tool's name, `arguments` what the model
    proposed (arguments LangGraph injects, such as state or the tool call id, are neither sent nor
    editable), `session_id` the given one (a string, or a callable asked on every call) or else the
    graph's `thread_id`. Approved or edited, the tool runs with the decided arguments; with
    `notify_edits` the result of an edited call starts with a note telling the model what ran.
    Otherwise the tool does not run and the answer (an error `ToolMessage` when called with a tool
    call, else the text) names the decision, who made it and the comment. A desk that cannot be reached
    raises (`HITLUnavailable`): run the step again to resume waiting on the same request.
    """
    if not isinstance(tool, BaseTool):
        from langchain_core.tools import tool as make_tool

        tool = make_tool(tool)
    return GatedTool(
        name=tool.name,
        description=tool.description,
        args_schema=tool.args_schema,
        return_direct=tool.return_direct,
        tool=tool,
        client=client,
        session_id=session_id,
        agent=agent,
        reason=reason,
        timeout_s=timeout_s,
        on_expire=on_expire,
        notify_edits=notify_edits,
    )


def _visible_arguments(tool: BaseTool) -> set[str] | None:
    """The arguments the model sees (injected ones left out); None when the schema does not say."""
    schema = tool.tool_call_schema
    if isinstance(schema, dict):
        properties = schema.get("properties")
        return set(properties) if isinstance(properties, dict) else None
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return set(schema.model_fields)
    return None


def _edit_problem(tool: BaseTool, arguments: dict[str, Any]) -> str | None:
    """Why the edited arguments do not fit the tool's schema, or None when they do."""
    schema = tool.tool_call_schema
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        try:
            schema.model_validate(arguments)
        except ValidationError as error:
            return "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in error.errors()
            )
    visible = _visible_arguments(tool)
    if visible is not None and not visible and arguments:
        return f"{sorted(arguments)} are not parameters of the tool"
    return None


# Interrupts of a paused graph


def resolve_interrupts(
    graph: Any,
    config: RunnableConfig,
    client: HITLClient,
    *,
    session_id: str | None = None,
    agent: str = "",
    timeout_s: float | None = None,
    on_expire: str | None = None,
) -> Command | None:
    """The `Command(resume=...)` answering the paused thread's interrupts from the desk, or None.

    Every interrupt becomes one approval request per tool call it asks about, and waits (blocking)
    for the decisions. None when the thread is not paused. Raises ValueError, before asking anything,
    for an interrupt it does not understand: no answer is made up for it.
    """
    snapshot = graph.get_state(config)
    plans = _plans(snapshot, session_id, agent, timeout_s, on_expire)
    if plans is None:
        return None
    resume = {}
    for interrupt_id, (requests, answer) in plans.items():
        resume[interrupt_id] = answer([client.request_approval_sync(**r) for r in requests])
    return Command(resume=resume)


async def aresolve_interrupts(
    graph: Any,
    config: RunnableConfig,
    client: HITLClient,
    *,
    session_id: str | None = None,
    agent: str = "",
    timeout_s: float | None = None,
    on_expire: str | None = None,
) -> Command | None:
    """`resolve_interrupts`, awaited (`graph.aget_state`, the client's async calls)."""
    snapshot = await graph.aget_state(config)
    plans = _plans(snapshot, session_id, agent, timeout_s, on_expire)
    if plans is None:
        return None
    resume = {}
    for interrupt_id, (requests, answer) in plans.items():
        resume[interrupt_id] = answer([await client.request_approval(**r) for r in requests])
    return Command(resume=resume)


def invoke_with_desk(
    graph: Any,
    input: Any,
    config: RunnableConfig,
    client: HITLClient,
    *,
    max_rounds: int = 50,
    **options: Any,
) -> Any:
    """`graph.invoke(input, config)`, answering every pause from the desk until the run ends.

    `options` go to `resolve_interrupts`. The graph needs a checkpointer and `config` a thread_id.
    """
    result = graph.invoke(input, config)
    for _ in range(max_rounds):
        command = resolve_interrupts(graph, config, client, **options)
        if command is None:
            return result
        result = graph.invoke(command, config)
    raise RuntimeError(f"the graph still pauses after {max_rounds} rounds of approvals")


async def ainvoke_with_desk(
    graph: Any,
    input: Any,
    config: RunnableConfig,
    client: HITLClient,
    *,
    max_rounds: int = 50,
    **options: Any,
) -> Any:
    """`invoke_with_desk`, awaited."""
    result = await graph.ainvoke(input, config)
    for _ in range(max_rounds):
        command = await aresolve_interrupts(graph, config, client, **options)
        if command is None:
            return result
        result = await graph.ainvoke(command, config)
    raise RuntimeError(f"the graph still pauses after {max_rounds} rounds of approvals")


Answer = Callable[[list[ApprovalDecision]], Any]


def _plans(
    snapshot: Any, session_id: str | None, agent: str, timeout_s: float | None, on_expire: str | None
) -> dict[str, tuple[list[dict[str, Any]], Answer]] | None:
    """For each pending interrupt: the approval requests to make and how to answer from the decisions."""
    interrupts = list(getattr(snapshot, "interrupts", ()) or ())
    if not interrupts:
        return None
    config = getattr(snapshot, "config", None) or {}
    session = session_id or _thread_id(config)
    if not session:
        raise ValueError("no session_id given and the graph's config has no thread_id to use as one")
    checkpoint = str((config.get("configurable") or {}).get("checkpoint_id") or "")
    plans: dict[str, tuple[list[dict[str, Any]], Answer]] = {}
    for pending in interrupts:
        asker = _Asker(session, checkpoint, str(pending.id), agent, timeout_s, on_expire)
        plans[pending.id] = _plan(pending.value, asker.request, pending.id)
    return plans


class _Asker:
    """Builds the approval requests of one interrupt."""

    def __init__(
        self,
        session: str,
        checkpoint: str,
        interrupt_id: str,
        agent: str,
        timeout_s: float | None,
        on_expire: str | None,
    ) -> None:
        self.session, self.checkpoint, self.interrupt_id = session, checkpoint, interrupt_id
        self.agent, self.timeout_s, self.on_expire = agent, timeout_s, on_expire

    def request(
        self, index: int, name: Any, arguments: Any, reason: str = "", tool_call_id: Any = None
    ) -> dict[str, Any]:
        if not isinstance(name, str) or not name:
            raise ValueError(f"interrupt {self.interrupt_id}: a tool call without a name")
        if not isinstance(arguments, Mapping):
            raise ValueError(f"interrupt {self.interrupt_id}: the arguments of {name!r} are not a dict")
        # A tool call id names the call across pauses; otherwise the paused checkpoint does.
        if tool_call_id:
            parts: tuple[str, ...] = (self.session, str(tool_call_id))
        else:
            parts = (self.session, self.checkpoint, self.interrupt_id, str(index))
        return {
            "tool_name": name,
            "arguments": dict(arguments),
            "session_id": self.session,
            "call_id": _desk_call_id(*parts),
            "reason": reason,
            "agent": self.agent,
            "timeout_s": self.timeout_s,
            "on_expire": self.on_expire,
        }


def _plan(
    value: Any, request: Callable[..., dict[str, Any]], interrupt_id: str
) -> tuple[list[dict[str, Any]], Answer]:
    # LangChain's HumanInTheLoopMiddleware, interrupt_mode="batched": a HITLRequest.
    if isinstance(value, Mapping) and isinstance(value.get("action_requests"), list):
        actions = value["action_requests"]
        configs = {
            c.get("action_name"): c for c in value.get("review_configs") or [] if isinstance(c, Mapping)
        }
        requests = [
            request(i, a.get("name"), _args(a), str(a.get("description") or ""))
            for i, a in enumerate(actions)
        ]

        def batched(decisions: list[ApprovalDecision]) -> Any:
            return {
                "decisions": [
                    _middleware_decision(
                        d, a.get("name"), _allowed(configs.get(a.get("name"))), "args" not in a
                    )
                    for d, a in zip(decisions, actions, strict=True)
                ]
            }

        return requests, batched
    # HumanInTheLoopMiddleware, interrupt_mode="per_call": a ToolApprovalRequest.
    if isinstance(value, Mapping) and value.get("type") == "tool_approval":
        name = value.get("name")
        requests = [
            request(
                0, name, value.get("args"), str(value.get("description") or ""), value.get("tool_call_id")
            )
        ]
        return requests, lambda decisions: _middleware_decision(decisions[0], name, None, False)
    # LangGraph's Agent Inbox: a list of HumanInterrupt, answered with a list of HumanResponse.
    if (
        isinstance(value, list)
        and value
        and all(isinstance(v, Mapping) and "action_request" in v for v in value)
    ):
        items = list(value)
        requests = [
            request(
                i,
                v["action_request"].get("action"),
                v["action_request"].get("args"),
                str(v.get("description") or ""),
            )
            for i, v in enumerate(items)
        ]

        def inbox(decisions: list[ApprovalDecision]) -> Any:
            return [_inbox_response(d, v) for d, v in zip(decisions, items, strict=True)]

        return requests, inbox
    # The plain shape, for a graph's own interrupt().
    if isinstance(value, Mapping) and (value.get("tool_name") or value.get("name")):
        name = value.get("tool_name") or value.get("name")
        arguments = value.get("arguments", value.get("args", {}))
        requests = [request(0, name, arguments, str(value.get("reason") or ""), value.get("tool_call_id"))]
        return requests, lambda decisions: _plain_answer(decisions[0])
    raise ValueError(
        f"interrupt {interrupt_id} has a value the desk cannot answer: {value!r:.200}; expected a "
        "HumanInTheLoopMiddleware request, Agent Inbox HumanInterrupts, or {'tool_name', 'arguments'}"
    )


def _args(action: Mapping[str, Any]) -> Any:
    # Releases of langchain 1.0 named the arguments "arguments"; later ones "args".
    return action["args"] if "args" in action else action.get("arguments")


def _allowed(config: Mapping[str, Any] | None) -> Sequence[str] | None:
    allowed = (config or {}).get("allowed_decisions")
    return allowed if isinstance(allowed, list) else None


def _middleware_decision(
    decision: ApprovalDecision, name: Any, allowed: Sequence[str] | None, old_keys: bool
) -> dict[str, Any]:
    """A HumanInTheLoopMiddleware decision: approve, edit (the decided arguments) or reject (why)."""
    if decision.approved and not decision.edited:
        return {"type": "approve"}
    if decision.approved:
        if allowed is None or "edit" in allowed:
            key = "arguments" if old_keys else "args"
            return {"type": "edit", "edited_action": {"name": name, key: dict(decision.arguments)}}
        message = (
            f"The call to {name} was not run: {decision.decided_by or 'an operator'} changed its arguments, "
            "and this tool does not accept edited calls."
        )
        return {"type": "reject", "message": message}
    return {"type": "reject", "message": refusal_message(decision, str(name))}


def _inbox_response(decision: ApprovalDecision, interrupt: Mapping[str, Any]) -> dict[str, Any]:
    action = interrupt["action_request"]
    if decision.approved and not decision.edited:
        return {"type": "accept", "args": None}
    allowed = interrupt.get("config") or {}
    if decision.approved and allowed.get("allow_edit", True):
        return {"type": "edit", "args": {"action": action.get("action"), "args": dict(decision.arguments)}}
    if decision.approved:
        message = (
            f"The call to {action.get('action')} was not run: {decision.decided_by or 'an operator'} "
            "changed its arguments, and this tool does not accept edited calls."
        )
        return {"type": "response", "args": message}
    return {"type": "response", "args": refusal_message(decision, str(action.get("action")))}


def _plain_answer(decision: ApprovalDecision) -> dict[str, Any]:
    return {
        "approved": decision.approved,
        "status": decision.status,
        "arguments": dict(decision.arguments) if decision.approved else None,
        "proposed_arguments": dict(decision.proposed_arguments),
        "comment": decision.comment,
        "decided_by": decision.decided_by,
        "call_id": decision.call_id,
        "message": None if decision.approved else refusal_message(decision, decision.tool_name or "tool"),
    }
