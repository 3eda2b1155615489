"""`eventbus-mcp-gate`: put human approval in front of any MCP server's tools.

    eventbus-mcp-gate --url URL --token TOKEN [--gate GLOB]... [--gate-destructive] [--session ID]
        [--agent NAME] [--timeout S] [--http HOST:PORT] -- COMMAND [ARG]...

An MCP server (stdio, or streamable HTTP with `--http`) that starts COMMAND as the upstream MCP server
(stdio) and passes everything through: `tools/list` unchanged, resources, resource templates, prompts
and completions when the upstream has them (the gate advertises the upstream's capabilities). A
`tools/call` whose tool matches a `--gate` glob (fnmatch, case-sensitive), or whose tool is annotated
`destructiveHint: true` under `--gate-destructive`, first becomes an approval request on the event bus
server (`HITLClient`) and waits, sending MCP progress notifications meanwhile when the MCP client asked
for progress: approved or edited, the upstream tool runs with the decided arguments and its result is
returned as is; rejected, expired or cancelled, the tool does not run and the result has `isError: true`
naming the decision, who decided and the comment. An MCP client that cancels the call cancels the
approval request. Every call publishes `tool_execution_requested` and then `tool_execution_completed`
or `tool_execution_failed`, in the background (no latency on the call).

Built on the official MCP Python SDK (`pip install 'eventbus-client[mcp]'`), imported here only: the
rest of `eventbus_client` needs httpx alone.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import logging
import os
import stat
import sys
import time
import uuid
from collections.abc import Awaitable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx

from .hitl import ApprovalDecision, HITLClient, HITLError

if TYPE_CHECKING:
    import mcp.types as mcp_types
    from mcp import ClientSession
    from mcp.server.context import ServerRequestContext
    from mcp.server.lowlevel import Server
    from mcp.shared.dispatcher import ProgressFnT

__all__ = ["GateConfig", "main", "parse_args", "run_gate"]

logger = logging.getLogger("eventbus_client.mcp_gate")

GATE_NAME = "eventbus-mcp-gate"
EVENT_SOURCE = "eventbus-mcp-gate"
PROGRESS_ENV = "EVENTBUS_GATE_PROGRESS_S"
DEFAULT_PROGRESS_S = 10.0  # MCP clients give up on a silent call after about 60 s
UPSTREAM_START_S = 60.0  # the upstream's initialize handshake
SHUTDOWN_FLUSH_S = 5.0  # events still unsent when the gate stops
CANCEL_TIMEOUT_S = 5.0  # withdrawing an approval request the MCP client abandoned
STDIN_LINE_LIMIT = 64 * 1024 * 1024  # one JSON-RPC message per line
RESULT_PREVIEW_CHARS = 1000  # the text of a result kept in tool_execution_completed


# Configuration


@dataclass
class GateConfig:
    """What the command line says."""

    url: str
    token: str
    command: list[str]
    gates: list[str] = field(default_factory=list)
    gate_destructive: bool = False
    session_id: str = ""
    agent: str = ""
    timeout_s: float | None = None
    progress_s: float = DEFAULT_PROGRESS_S
    http: tuple[str, int] | None = None  # serve streamable HTTP on (host, port) instead of stdio
    http_path: str = "/mcp"


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def parse_args(argv: Sequence[str]) -> GateConfig:
    """The gate's configuration from its arguments (`--` then the upstream's command); exits on errors."""
    argv = list(argv)
    if "--" in argv:
        split = argv.index("--")
        options, command = argv[:split], argv[split + 1 :]
    else:
        options, command = argv, []
    parser = argparse.ArgumentParser(
        prog=GATE_NAME,
        usage=f"{GATE_NAME} --url URL --token TOKEN [--gate GLOB]... [--gate-destructive] [--session ID] "
        "[--agent NAME] [--timeout S] [--http HOST:PORT] -- COMMAND [ARG]...",
        description="An MCP server in front of another (COMMAND, over stdio) that holds chosen tool calls "
        "until a person approves them on the event bus server.",
    )
    parser.add_argument("--url", default=os.environ.get("EVENTBUS_URL"), help="the server (EVENTBUS_URL)")
    parser.add_argument(
        "--token",
        default=os.environ.get("EVENTBUS_TOKEN"),
        help="an API token of the agents group (EVENTBUS_TOKEN; prefer the variable: arguments are visible)",
    )
    parser.add_argument(
        "--gate",
        action="append",
        default=[],
        metavar="GLOB",
        help="hold calls of tools whose name matches (fnmatch, e.g. 'delete_*'); repeatable",
    )
    parser.add_argument(
        "--gate-destructive",
        action="store_true",
        help="also hold calls of tools annotated destructiveHint: true",
    )
    parser.add_argument("--session", default="", help="the session_id of requests and events")
    parser.add_argument("--agent", default="", help="the agent named on approval requests and events")
    parser.add_argument(
        "--timeout", type=_positive, default=None, metavar="S", help="seconds an operator has to decide"
    )
    parser.add_argument(
        "--http",
        type=_host_port,
        default=None,
        metavar="HOST:PORT",
        help="serve streamable HTTP at http://HOST:PORT/mcp instead of stdio",
    )
    parser.add_argument("--transport", choices=("stdio", "streamable-http"), default=None)
    parser.add_argument("--host", default="127.0.0.1", help="with --transport streamable-http")
    parser.add_argument("--port", type=int, default=None, help="with --transport streamable-http")
    parser.add_argument(
        "--progress-interval",
        type=_positive,
        default=None,
        metavar="S",
        help=f"seconds between progress notifications while a call waits ({PROGRESS_ENV}, default 10)",
    )
    args = parser.parse_args(options)
    if not args.url or not args.token:
        parser.error("--url and --token (or EVENTBUS_URL and EVENTBUS_TOKEN) are required")
    if not command:
        parser.error("the upstream MCP server's command is missing: ... -- COMMAND [ARG]...")
    http = args.http
    if args.transport == "streamable-http" and http is None:
        if args.port is None:
            parser.error("--transport streamable-http needs --port")
        http = (args.host, args.port)
    elif args.transport == "stdio" and http is not None:
        parser.error("--http and --transport stdio contradict each other")
    progress_s = args.progress_interval
    if progress_s is None:
        try:
            progress_s = _positive(os.environ.get(PROGRESS_ENV) or str(DEFAULT_PROGRESS_S))
        except (ValueError, argparse.ArgumentTypeError):
            parser.error(f"{PROGRESS_ENV} must be a positive number of seconds")
    return GateConfig(
        url=args.url,
        token=args.token,
        command=command,
        gates=list(args.gate),
        gate_destructive=args.gate_destructive,
        session_id=args.session or f"mcp-gate-{uuid.uuid4()}",
        agent=args.agent,
        timeout_s=args.timeout,
        progress_s=progress_s,
        http=http,
    )


# Events


def _now() -> str:
    return datetime.now(UTC).replace(tzinfo=None).isoformat() + "Z"


class _BackgroundPublisher:
    """Stand-in for `eventbus_client.publisher.AsyncEventPublisher` when that is not available: events
    are queued and POSTed to /api/events/ in batches by a background task, retried with the same
    event_ids after a timeout, a network error or a 502/503/504."""

    def __init__(self, url: str, token: str, *, batch_size: int = 500, max_buffer: int = 100_000) -> None:
        self._http = httpx.AsyncClient(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}", "User-Agent": GATE_NAME},
            timeout=10.0,
        )
        self._batch_size = batch_size
        self._max_buffer = max_buffer
        self._buffer: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.sent = self.failed = self.dropped = 0

    async def publish(self, event: dict[str, Any]) -> None:
        self.publish_nowait(event)

    def publish_nowait(self, event: dict[str, Any]) -> None:
        if len(self._buffer) >= self._max_buffer:
            self.dropped += 1
            return
        self._buffer.append(event)
        self._idle.clear()
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._buffer:
                batch = self._buffer[: self._batch_size]
                del self._buffer[: self._batch_size]
                await self._send(batch)
            self._idle.set()

    async def _send(self, batch: list[dict[str, Any]]) -> None:
        delay = 0.5
        for attempt in range(6):
            try:
                response = await self._http.post("/api/events/", json=batch)
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as error:
                problem = f"{type(error).__name__}: {error}"
            else:
                if response.status_code < 300:
                    self.sent += len(batch)
                    return
                problem = f"HTTP {response.status_code}: {response.text[:300]}"
                if response.status_code not in (502, 503, 504):
                    break
            if attempt < 5:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        self.failed += len(batch)
        logger.warning("%d event(s) not published: %s", len(batch), problem)

    async def flush(self, timeout: float | None = None) -> None:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            pass

    async def close(self) -> None:
        await self.flush(SHUTDOWN_FLUSH_S)
        if self._task is not None:
            self._task.cancel()
        await self._http.aclose()


def _make_publisher(url: str, token: str) -> Any:
    try:
        from .publisher import AsyncEventPublisher  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return _BackgroundPublisher(url, token)
    # Events are never worth holding a tool call for: a full buffer drops (and counts) them.
    return AsyncEventPublisher(url, token, overflow="drop", close_timeout=SHUTDOWN_FLUSH_S)


# The gate


@dataclass
class _Outcome:
    """What became of an approval request: a decision, or why there is none."""

    decision: ApprovalDecision | None = None
    error: BaseException | None = None


class Gate:
    """The proxy's handlers: everything goes to `upstream`, tools/call through approval when gated."""

    def __init__(self, config: GateConfig, upstream: ClientSession, hitl: HITLClient, publisher: Any) -> None:
        self.config = config
        self.upstream = upstream
        self.hitl = hitl
        self.publisher = publisher
        self._destructive: dict[str, bool] = {}  # tool name -> annotated destructiveHint: true
        self._tasks: set[asyncio.Task[None]] = set()

    # Which calls are held

    def _remember(self, tools: Sequence[mcp_types.Tool]) -> None:
        for tool in tools:
            annotations = tool.annotations
            self._destructive[tool.name] = bool(
                annotations is not None and annotations.destructive_hint is True
            )

    async def _is_destructive(self, name: str) -> bool:
        if name not in self._destructive:  # called without listing first: list now, every page
            cursor: str | None = None
            import mcp.types as types

            while True:
                page = await self.upstream.list_tools(
                    params=types.PaginatedRequestParams(cursor=cursor) if cursor else None
                )
                self._remember(page.tools)
                cursor = page.next_cursor
                if not cursor:
                    break
        return self._destructive.get(name, False)

    async def is_gated(self, name: str) -> bool:
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in self.config.gates):
            return True
        return self.config.gate_destructive and await self._is_destructive(name)

    # Pass-through handlers

    async def list_tools(
        self, ctx: ServerRequestContext[Any], params: mcp_types.PaginatedRequestParams | None
    ) -> mcp_types.ListToolsResult:
        result = await self.upstream.list_tools(params=params)
        self._remember(result.tools)
        return result

    async def list_resources(
        self, ctx: ServerRequestContext[Any], params: mcp_types.PaginatedRequestParams | None
    ) -> mcp_types.ListResourcesResult:
        return await self.upstream.list_resources(params=params)

    async def list_resource_templates(
        self, ctx: ServerRequestContext[Any], params: mcp_types.PaginatedRequestParams | None
    ) -> mcp_types.ListResourceTemplatesResult:
        return await self.upstream.list_resource_templates(params=params)

    async def read_resource(
        self, ctx: ServerRequestContext[Any], params: mcp_types.ReadResourceRequestParams
    ) -> mcp_types.ReadResourceResult:
        return await self.upstream.read_resource(str(params.uri))

    async def list_prompts(
        self, ctx: ServerRequestContext[Any], params: mcp_types.PaginatedRequestParams | None
    ) -> mcp_types.ListPromptsResult:
        return await self.upstream.list_prompts(params=params)

    async def get_prompt(
        self, ctx: ServerRequestContext[Any], params: mcp_types.GetPromptRequestParams
    ) -> mcp_types.GetPromptResult:
        return await self.upstream.get_prompt(params.name, params.arguments)

    async def complete(
        self, ctx: ServerRequestContext[Any], params: mcp_types.CompleteRequestParams
    ) -> mcp_types.CompleteResult:
        context = params.context.arguments if params.context is not None else None
        return await self.upstream.complete(
            params.ref, params.argument.model_dump(by_alias=True, exclude_none=True), context
        )

    # tools/call

    async def call_tool(
        self, ctx: ServerRequestContext[Any], params: mcp_types.CallToolRequestParams
    ) -> mcp_types.CallToolResult:
        import anyio
        from mcp.shared.exceptions import MCPError

        name = params.name
        arguments: dict[str, Any] = dict(params.arguments or {})
        call_id = str(uuid.uuid4())
        started = time.monotonic()
        requested = self._publish(
            "tool_execution_requested",
            call_id,
            {"tool_name": name, "call_id": call_id, "arguments": arguments, **self._agent()},
        )
        progress = _Progress(ctx)
        try:
            if await self.is_gated(name):
                outcome = await self._approval(ctx, progress, name, arguments, call_id, requested)
                refusal = self._refusal(name, call_id, outcome)
                if refusal is not None:
                    text, error_type = refusal
                    self._failed(name, call_id, requested, started, text, error_type)
                    return _error_result(text)
                assert outcome.decision is not None
                arguments = outcome.decision.arguments
            result = await self.upstream.call_tool(
                name, arguments, progress_callback=progress.forward() if progress.wanted else None
            )
        except anyio.get_cancelled_exc_class():
            self._failed(name, call_id, requested, started, "the MCP client cancelled the call", "Cancelled")
            raise
        except MCPError as error:
            self._failed(name, call_id, requested, started, error.message, "MCPError")
            raise
        except Exception as error:  # the upstream is gone, or answered what the SDK cannot read
            message = f"the upstream MCP server failed: {type(error).__name__}: {error}"
            self._failed(name, call_id, requested, started, message, type(error).__name__)
            raise MCPError(-32603, message) from None
        if result.is_error:
            self._failed(name, call_id, requested, started, _text_of(result) or "isError", "ToolError")
        else:
            self._publish(
                "tool_execution_completed",
                call_id,
                {
                    "tool_name": name,
                    "call_id": call_id,
                    "duration_ms": _elapsed_ms(started),
                    "result": _text_of(result)[:RESULT_PREVIEW_CHARS],
                    **self._agent(),
                },
                causation_id=requested,
            )
        return result

    async def _approval(
        self,
        ctx: ServerRequestContext[Any],
        progress: _Progress,
        name: str,
        arguments: dict[str, Any],
        call_id: str,
        requested: str,
    ) -> _Outcome:
        """Ask for approval and wait, sending progress; an abandoned call withdraws its request.

        The request names the call's `tool_execution_requested` (`requested`) as its cause, in the
        call's correlation: the trace shows the approval, and the decision, under the tool call."""
        import anyio

        outcome = _Outcome()
        logger.info("holding %s (call %s) for approval", name, call_id)
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(
                    progress.tick, f"waiting for a person to approve {name}", self.config.progress_s
                )
                try:
                    outcome.decision = await self.hitl.request_approval(
                        tool_name=name,
                        arguments=arguments,
                        session_id=self.config.session_id,
                        call_id=call_id,
                        agent=self.config.agent,
                        timeout_s=self.config.timeout_s,
                        correlation_id=call_id,
                        causation_id=requested,
                    )
                except (HITLError, TypeError, ValueError) as error:
                    outcome.error = error
                group.cancel_scope.cancel()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True), anyio.move_on_after(CANCEL_TIMEOUT_S):
                try:
                    await self.hitl.cancel(call_id)
                    logger.info("cancelled the approval request of %s (call %s)", name, call_id)
                except Exception as error:
                    logger.warning("could not cancel approval request %s: %s", call_id, error)
            raise
        return outcome

    def _refusal(self, name: str, call_id: str, outcome: _Outcome) -> tuple[str, str] | None:
        """The text and error type of a call that must not run, or None when it may."""
        decision = outcome.decision
        if decision is None:
            return (
                f"{GATE_NAME}: the call to {name} was not run: no approval could be obtained "
                f"({outcome.error}). Approval request {call_id}.",
                "ApprovalUnavailable",
            )
        if decision.approved:
            logger.info("%s (call %s) %s by %s", name, call_id, decision.status, decision.decided_by or "-")
            return None
        what = {"expired": "expired without a decision"}.get(decision.status, decision.status)
        text = f"{GATE_NAME}: the call to {name} was {what}"
        if decision.decided_by:
            text += f" by {decision.decided_by}"
        text += f"; comment: {decision.comment}" if decision.comment else "; no comment"
        text += f". The tool was not run (approval request {call_id})."
        logger.info("%s (call %s) %s by %s", name, call_id, decision.status, decision.decided_by or "-")
        return text, f"Approval{decision.status.capitalize()}"

    # Events

    def _agent(self) -> dict[str, str]:
        return {"agent": self.config.agent} if self.config.agent else {}

    def _failed(
        self, name: str, call_id: str, requested: str, started: float, message: str, error_type: str
    ) -> None:
        self._publish(
            "tool_execution_failed",
            call_id,
            {
                "tool_name": name,
                "call_id": call_id,
                "error_message": message,
                "error_type": error_type,
                "duration_ms": _elapsed_ms(started),
                **self._agent(),
            },
            causation_id=requested,
        )

    def _publish(
        self, event_type: str, call_id: str, data: dict[str, Any], causation_id: str | None = None
    ) -> str:
        """Hand an event to the publisher without waiting for it; its event_id."""
        event_id = str(uuid.uuid4())
        event = {
            "event_id": event_id,
            "event_type": event_type,
            "timestamp": _now(),
            "session_id": self.config.session_id,
            "correlation_id": call_id,
            "causation_id": causation_id,
            "source": EVENT_SOURCE,
            "data": data,
        }
        try:
            nowait = getattr(self.publisher, "publish_nowait", None)
            if nowait is not None:
                nowait(event)
                return event_id
            outcome = self.publisher.publish(event)
            if isinstance(outcome, Awaitable):
                task = asyncio.ensure_future(outcome)
                self._tasks.add(task)
                task.add_done_callback(self._published)
        except Exception as error:  # events must never break a call
            logger.warning("event %s not published: %s", event_type, error)
        return event_id

    def _published(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("event not published: %s", task.exception())

    # The MCP server

    def build_server(self, upstream_init: mcp_types.InitializeResult) -> Server[Any]:
        """A low-level MCP server with a handler for each capability the upstream advertises."""
        from mcp.server.lowlevel import Server

        capabilities = upstream_init.capabilities
        tools = capabilities.tools is not None
        resources = capabilities.resources is not None
        prompts = capabilities.prompts is not None
        info = upstream_init.server_info
        server: Server[Any] = Server(
            info.name or GATE_NAME,
            version=info.version or "",
            title=info.title,
            instructions=upstream_init.instructions,
            on_list_tools=self.list_tools if tools else None,
            on_call_tool=self.call_tool if tools else None,
            on_list_resources=self.list_resources if resources else None,
            on_list_resource_templates=self.list_resource_templates if resources else None,
            on_read_resource=self.read_resource if resources else None,
            on_list_prompts=self.list_prompts if prompts else None,
            on_get_prompt=self.get_prompt if prompts else None,
            on_completion=self.complete if capabilities.completions is not None else None,
        )
        return server


class _Progress:
    """Progress notifications of one call: ticks while it waits for approval, then the upstream's own
    progress shifted past them (a progress value must only grow)."""

    def __init__(self, ctx: ServerRequestContext[Any]) -> None:
        self._ctx = ctx
        meta: Mapping[str, Any] = ctx.meta or {}
        self.wanted = meta.get("progressToken", meta.get("progress_token")) is not None
        self._sent = 0.0

    async def tick(self, message: str, interval: float) -> None:
        import anyio

        if not self.wanted:
            return
        count = 0
        while True:
            try:
                await self._ctx.session.report_progress(count, None, message)
            except Exception as error:  # the MCP client is gone: stop ticking
                logger.debug("progress not sent: %s", error)
                return
            self._sent = float(count + 1)
            count += 1
            await anyio.sleep(interval)

    def forward(self) -> ProgressFnT:
        base = self._sent

        async def relay(progress: float, total: float | None, message: str | None) -> None:
            try:
                await self._ctx.session.report_progress(
                    base + progress, base + total if total is not None else None, message
                )
            except Exception as error:
                logger.debug("progress not relayed: %s", error)

        return relay


def _elapsed_ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 3)


def _text_of(result: mcp_types.CallToolResult) -> str:
    return "\n".join(
        getattr(block, "text", "") for block in result.content if getattr(block, "type", "") == "text"
    )


def _error_result(text: str) -> mcp_types.CallToolResult:
    import mcp.types as types

    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)


# Streams


class _EndWatch:
    """The upstream's read stream, setting `ended` when the upstream closes its side (it exited)."""

    def __init__(self, stream: Any, ended: Any) -> None:
        self._stream = stream
        self._ended = ended

    def __getattr__(self, name: str) -> Any:  # last_context and whatever else a dispatcher reads
        return getattr(self._stream, name)

    async def receive(self) -> Any:
        import anyio

        try:
            return await self._stream.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._ended.set()
            raise

    async def aclose(self) -> None:
        await self._stream.aclose()

    def __aiter__(self) -> _EndWatch:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._stream.__anext__()
        except StopAsyncIteration:
            self._ended.set()
            raise

    async def __aenter__(self) -> _EndWatch:
        await self._stream.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        result: bool | None = await self._stream.__aexit__(*exc_info)
        return result


class _PipeLines:
    """Lines of a pipe on stdin, read by the event loop: unlike a thread's read, cancellable, so the gate
    stops at once when its upstream dies even though the MCP client sends nothing."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    def __aiter__(self) -> _PipeLines:
        return self

    async def __anext__(self) -> str:
        line = await self._reader.readline()
        if not line:
            raise StopAsyncIteration
        return line.decode("utf-8", errors="replace")


async def _stdin_lines() -> _PipeLines | None:
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError, AttributeError):
        return None
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        return None  # a terminal or a file: the SDK's own reader
    reader = asyncio.StreamReader(limit=STDIN_LINE_LIMIT)
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return _PipeLines(reader)


def _upstream_env() -> dict[str, str]:
    """The gate's environment for the upstream (it is what the MCP client configured), without the
    gate's own token."""
    return {key: value for key, value in os.environ.items() if key != "EVENTBUS_TOKEN"}


# Running


async def run_gate(config: GateConfig) -> int:
    """Serve until the MCP client goes away (0) or the upstream dies or cannot start (1)."""
    import anyio
    from mcp import ClientSession, StdioServerParameters, stdio_client
    from mcp.types import Implementation

    from . import __version__

    upstream_ended = anyio.Event()
    exit_code = 0
    async with AsyncExitStack() as stack:
        hitl = await stack.enter_async_context(HITLClient(config.url, config.token))
        publisher = _make_publisher(config.url, config.token)

        async def close_publisher() -> None:
            with anyio.move_on_after(SHUTDOWN_FLUSH_S * 2, shield=True):
                await publisher.close()

        stack.push_async_callback(close_publisher)
        parameters = StdioServerParameters(
            command=config.command[0], args=config.command[1:], env=_upstream_env()
        )
        try:
            read, write = await stack.enter_async_context(stdio_client(parameters))
        except OSError as error:
            logger.error("cannot start the upstream MCP server %r: %s", config.command[0], error)
            return 1
        upstream = await stack.enter_async_context(
            ClientSession(
                _EndWatch(read, upstream_ended),
                write,
                client_info=Implementation(name=GATE_NAME, version=__version__),
            )
        )
        try:
            with anyio.fail_after(UPSTREAM_START_S):
                init = await upstream.initialize()
        except Exception as error:
            logger.error("the upstream MCP server %r did not start: %s", config.command[0], error)
            return 1
        gate = Gate(config, upstream, hitl, publisher)
        server = gate.build_server(init)
        logger.info(
            "gating %s (upstream %s), session %s",
            ", ".join(config.gates + (["destructiveHint"] if config.gate_destructive else [])) or "nothing",
            init.server_info.name,
            config.session_id,
        )

        async with anyio.create_task_group() as group:

            async def serve() -> None:
                if config.http is not None:
                    await _serve_http(server, config)
                else:
                    await _serve_stdio(server)
                group.cancel_scope.cancel()

            async def watch_upstream() -> None:
                nonlocal exit_code
                await upstream_ended.wait()
                logger.error("the upstream MCP server exited; stopping")
                exit_code = 1
                await anyio.sleep(0.2)  # the error answers of pending calls go out
                group.cancel_scope.cancel()

            group.start_soon(serve)
            group.start_soon(watch_upstream)
    return exit_code


async def _serve_stdio(server: Server[Any]) -> None:
    from mcp.server.stdio import stdio_server

    stdin = await _stdin_lines()
    async with stdio_server(stdin=stdin) as (read, write):  # type: ignore[arg-type]
        await server.run(read, write, server.create_initialization_options())


async def _serve_http(server: Server[Any], config: GateConfig) -> None:
    import uvicorn

    assert config.http is not None
    host, port = config.http
    app = server.streamable_http_app(streamable_http_path=config.http_path, host=host)
    logger.info("serving streamable HTTP at http://%s:%d%s", host, port, config.http_path)
    uvicorn_server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    try:
        await uvicorn_server.serve()
    finally:
        uvicorn_server.should_exit = True


def main(argv: Sequence[str] | None = None) -> None:
    """The console script."""
    config = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=os.environ.get("EVENTBUS_GATE_LOG_LEVEL", "INFO").upper(),
        format=f"{GATE_NAME}: %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "httpcore", "mcp", "uvicorn"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        import mcp  # noqa: F401
    except ImportError:
        sys.exit(f"{GATE_NAME} needs the MCP SDK: pip install 'eventbus-client[mcp]'")
    try:
        code = asyncio.run(run_gate(config))
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
