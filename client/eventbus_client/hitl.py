"""Ask a person to approve a tool call, from an agent runtime in another process.

What an agent process uses: it has no Django, so nothing here imports Django (only httpx and the
standard library). `HITLClient.request_approval` creates the approval request, long-polls until it is
decided, and returns an `ApprovalDecision`; `require_approval` wraps a tool function so that it runs only
once approved, with the operator's edited arguments after an EDIT.

Failing closed: a rejection, an expiry with `on_expire="reject"`, a cancellation, an answer the client
does not understand or a server that stays unreachable never lets the tool run.

The request logic is written once, as generators that yield what to do (send a request, sleep) and
receive the outcome; `_drive_async` and `_drive_sync` carry it out with httpx's async and sync clients.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar, cast
from urllib.parse import quote

import httpx

__all__ = [
    "ApprovalDecision",
    "ApprovalRejected",
    "ApprovalTimeout",
    "HITLClient",
    "HITLError",
    "HITLUnavailable",
    "require_approval",
]

logger = logging.getLogger("eventbus_client.hitl")

REQUESTS_PATH = "/api/hitl/requests/"
MAX_WAIT_S = 60.0  # the server's limit for ?wait=
MIN_POLL_INTERVAL_S = 0.5  # a server (or proxy) that ignores ?wait= is not hammered
PENDING, APPROVED, EDITED, EXPIRED = "pending", "approved", "edited", "expired"
RETRY_STATUSES = frozenset({502, 503, 504})
# Transport failures worth another try; anything else (a bad URL, a local protocol error) is a bug.
RETRYABLE_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


# Errors


class HITLError(Exception):
    """A refused or failed approval call: the HTTP `status` (None when there was no answer), a `code`
    (the server's, e.g. `call_id_conflict`, or the client's own) and a `detail` message."""

    def __init__(self, status: int | None, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail

    def __str__(self) -> str:
        where = f"HTTP {self.status}, " if self.status is not None else ""
        return f"{self.detail} ({where}{self.code})"


class HITLUnavailable(HITLError):
    """The server stayed unreachable (or answered 502/503/504) through every retry.

    The request may exist: call `request_approval` again with the same `call_id` to resume waiting.
    """


class ApprovalTimeout(HITLError):
    """The request was still pending well after its expiry (the server never expired it)."""


class ApprovalRejected(HITLError):
    """The tool must not run: the call was rejected, expired without auto-approval, or cancelled."""

    def __init__(self, decision: ApprovalDecision) -> None:
        detail = f"{decision.tool_name or 'tool'} call {decision.call_id} was {decision.status}"
        if decision.decided_by:
            detail += f" by {decision.decided_by}"
        if decision.comment:
            detail += f": {decision.comment}"
        super().__init__(None, decision.status, detail)
        self.decision = decision
        self.comment = decision.comment


# The decision


@dataclass(frozen=True)
class ApprovalDecision:
    """The outcome of an approval request: whether the tool may run, and with which arguments."""

    call_id: str
    status: str  # pending, approved, edited, rejected, expired, cancelled
    arguments: dict[str, Any]  # what the tool must run with: the edited ones after EDIT, else the proposed
    proposed_arguments: dict[str, Any]
    comment: str
    decided_by: str | None
    channel: str | None
    tool_name: str = ""
    on_expire: str = "reject"
    decided_at: str | None = None

    @property
    def approved(self) -> bool:
        """Whether the tool may run: approved, edited, or expired with on_expire == "approve"."""
        return self.status in (APPROVED, EDITED) or (self.status == EXPIRED and self.on_expire == "approve")

    @property
    def edited(self) -> bool:
        """Whether an operator changed the arguments."""
        return self.status == EDITED

    @classmethod
    def from_request(cls, data: Mapping[str, Any]) -> ApprovalDecision:
        """The decision carried by an approval request as the server's JSON."""
        status = data.get("status")
        proposed = data.get("arguments")
        if not isinstance(status, str) or not isinstance(proposed, dict):
            raise _invalid_response(f"an approval request without a status or arguments: {data!r:.200}")
        arguments = proposed
        if status == EDITED:
            modified = data.get("modified_args")
            if not isinstance(modified, dict):
                # Running the proposed call instead would run what nobody approved.
                raise _invalid_response("an edited request without modified_args")
            arguments = modified
        on_expire = data.get("on_expire")
        return cls(
            call_id=str(data.get("call_id", "")),
            status=status,
            arguments=arguments,
            proposed_arguments=proposed,
            comment=data.get("comment") or "",
            decided_by=data.get("decided_by") or None,
            channel=data.get("channel") or None,
            tool_name=str(data.get("tool_name") or ""),
            on_expire=on_expire if on_expire in ("reject", "approve") else "reject",
            decided_at=data.get("decided_at"),
        )


def _invalid_response(detail: str) -> HITLError:
    return HITLError(None, "invalid_response", detail)


# Steps of a flow: what the drivers carry out


@dataclass(frozen=True)
class _Send:
    method: str
    path: str
    json: Any = None
    params: dict[str, str] | None = None
    read_timeout: float | None = None  # beyond the client's timeout: a long poll's hold


@dataclass(frozen=True)
class _Sleep:
    seconds: float


@dataclass(frozen=True)
class _Reply:
    data: dict[str, Any]
    status: int
    received: float  # time.monotonic() when it arrived
    server_time: datetime | None  # from the Date header, to read expires_at on the server's clock


_Flow = Generator[_Send | _Sleep, Any, T]


class HITLClient:
    """The approval API of the event bus server, for agent runtimes (no Django needed).

    `base_url` is the server (`http://127.0.0.1:8000`), `token` an API token of the `agents` group.
    `timeout` bounds each HTTP exchange (a long poll gets its hold on top); connection errors, timeouts
    and 502/503/504 are retried `retries` times, waiting `backoff` seconds doubled each time (at most
    `max_backoff`, or the server's Retry-After). Every method has a blocking twin ending in `_sync`.

    Each call opens its own connection pool, so one client serves any number of event loops and
    threads; `async with client:` (or `with client:`) keeps one pool open until the block ends.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 10.0,
        retries: int = 8,
        backoff: float = 0.5,
        max_backoff: float = 10.0,
        poll_wait: float = 50.0,
        expiry_grace: float = 10.0,
        transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not base_url or not token:
            raise ValueError("HITLClient needs the server's base_url and an API token")
        if retries < 0 or backoff < 0 or max_backoff < 0 or timeout <= 0 or expiry_grace < 0:
            raise ValueError("timeout must be positive; retries, backoff and expiry_grace not negative")
        if not 0 < poll_wait <= MAX_WAIT_S:
            raise ValueError(f"poll_wait must be above 0 and at most {MAX_WAIT_S:g} seconds")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.poll_wait = poll_wait
        self.expiry_grace = expiry_grace
        # httpx.MockTransport is both kinds; tests pass one here.
        self._transport = transport
        self._headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            "User-Agent": "hitl-client",
        }
        self._async_http: httpx.AsyncClient | None = None
        self._sync_http: httpx.Client | None = None

    def __repr__(self) -> str:
        return f"HITLClient({self.base_url!r})"  # never the token

    # Public API, async

    async def request_approval(
        self,
        *,
        tool_name: str,
        arguments: Mapping[str, Any],
        session_id: str,
        call_id: str | None = None,
        reason: str = "",
        agent: str = "",
        timeout_s: float | None = None,
        on_expire: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> ApprovalDecision:
        """Ask for approval of one tool call and wait for the decision (see `request_approval_sync`)."""
        flow = self._approval_flow(
            _request_body(
                tool_name=tool_name,
                arguments=arguments,
                session_id=session_id,
                call_id=call_id,
                reason=reason,
                agent=agent,
                timeout_s=timeout_s,
                on_expire=on_expire,
                correlation_id=correlation_id,
                causation_id=causation_id,
            )
        )
        return await self._drive_async(flow)

    async def get(self, call_id: str, *, wait: float | None = None) -> dict[str, Any]:
        """The approval request as the server's JSON; with `wait`, held until decided (at most 60 s)."""
        return await self._drive_async(self._get_flow(call_id, wait))

    async def cancel(self, call_id: str) -> dict[str, Any]:
        """Withdraw a pending request; returns it afterwards (its status says whether a decision won)."""
        return await self._drive_async(self._cancel_flow(call_id))

    async def aclose(self) -> None:
        """Close the pool kept by `async with`."""
        if self._async_http is not None:
            await self._async_http.aclose()
            self._async_http = None

    async def __aenter__(self) -> HITLClient:
        self._async_http = self._new_async_http()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # Public API, blocking

    def request_approval_sync(
        self,
        *,
        tool_name: str,
        arguments: Mapping[str, Any],
        session_id: str,
        call_id: str | None = None,
        reason: str = "",
        agent: str = "",
        timeout_s: float | None = None,
        on_expire: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> ApprovalDecision:
        """Ask for approval of one tool call and block until it is decided.

        `call_id` (a new uuid4 when None) is the idempotency key: every retry reuses it, so the server
        holds one request however often the network fails; calling again with the same `call_id` after
        a crash or a `HITLUnavailable` resumes waiting on the same request. `timeout_s` is the
        request's deadline (the server's default when None); `on_expire` ("reject" by default, or
        "approve") decides what the deadline means. Returns the decision whatever it is (check
        `.approved`); raises `HITLError` when the server refuses the request (4xx), `HITLUnavailable`
        when it stays unreachable, `ApprovalTimeout` when no decision came by the expiry plus
        `expiry_grace`, and `TypeError` before any request when the arguments are not JSON.

        `causation_id` is the event id of the `tool_execution_requested` the agent published for this
        call (with its `correlation_id`): the server stores the request, and its decision, as that
        event's children, so the call's trace shows who held it and for how long.
        """
        flow = self._approval_flow(
            _request_body(
                tool_name=tool_name,
                arguments=arguments,
                session_id=session_id,
                call_id=call_id,
                reason=reason,
                agent=agent,
                timeout_s=timeout_s,
                on_expire=on_expire,
                correlation_id=correlation_id,
                causation_id=causation_id,
            )
        )
        return self._drive_sync(flow)

    def get_sync(self, call_id: str, *, wait: float | None = None) -> dict[str, Any]:
        """`get`, blocking."""
        return self._drive_sync(self._get_flow(call_id, wait))

    def cancel_sync(self, call_id: str) -> dict[str, Any]:
        """`cancel`, blocking."""
        return self._drive_sync(self._cancel_flow(call_id))

    def close(self) -> None:
        """Close the pool kept by `with`."""
        if self._sync_http is not None:
            self._sync_http.close()
            self._sync_http = None

    def __enter__(self) -> HITLClient:
        self._sync_http = self._new_sync_http()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Flows

    def _approval_flow(self, body: dict[str, Any]) -> _Flow[ApprovalDecision]:
        call_id = body["call_id"]
        reply = yield from self._exchange(_Send("POST", REQUESTS_PATH, json=body))
        data = _check_request(reply.data, call_id)
        if data["status"] != PENDING:
            return ApprovalDecision.from_request(data)  # decided before: an agent that came back
        give_up = _local_deadline(reply) + self.expiry_grace
        path = _request_path(call_id)
        while data["status"] == PENDING:
            left = give_up - time.monotonic()
            if left <= 0:
                raise ApprovalTimeout(
                    None,
                    "no_decision",
                    f"approval request {call_id} is still pending {self.expiry_grace:g} s after it "
                    f"expired at {data.get('expires_at')}; the tool must not run",
                )
            # Until the expiry the server answers the moment a decision is made; past it, the server
            # expires the request itself, and the few seconds of grace wait for that answer.
            wait = min(self.poll_wait, max(1.0, math.ceil(left)))
            started = time.monotonic()
            reply = yield from self._exchange(
                _Send("GET", path, params={"wait": f"{wait:g}"}, read_timeout=wait)
            )
            data = _check_request(reply.data, call_id)
            early = MIN_POLL_INTERVAL_S - (time.monotonic() - started)
            if data["status"] == PENDING and early > 0:
                yield _Sleep(early)
        return ApprovalDecision.from_request(data)

    def _get_flow(self, call_id: str, wait: float | None) -> _Flow[dict[str, Any]]:
        params = None
        if wait:
            if not 0 < wait <= MAX_WAIT_S:
                raise ValueError(f"wait must be above 0 and at most {MAX_WAIT_S:g} seconds")
            params = {"wait": f"{wait:g}"}
        send = _Send("GET", _request_path(call_id), params=params, read_timeout=wait or None)
        reply = yield from self._exchange(send)
        return _check_request(reply.data, call_id)

    def _cancel_flow(self, call_id: str) -> _Flow[dict[str, Any]]:
        try:
            reply = yield from self._exchange(_Send("POST", _request_path(call_id) + "cancel/", json={}))
        except HITLError as error:
            if error.status != 409:
                raise
            # No longer pending: decided first, or this cancel's earlier attempt took effect before
            # its answer was lost. Either way the request as it is now says which.
            reply = yield from self._exchange(_Send("GET", _request_path(call_id)))
        return _check_request(reply.data, call_id)

    def _exchange(self, send: _Send) -> _Flow[_Reply]:
        """One HTTP exchange, retried on connection errors, timeouts and 502/503/504."""
        attempt = 0
        while True:
            outcome = yield send
            retry_after: float | None = None
            if isinstance(outcome, BaseException):
                problem: HITLError = HITLUnavailable(
                    None, "unreachable", f"{send.method} {send.path}: {type(outcome).__name__}: {outcome}"
                )
            else:
                response = cast(httpx.Response, outcome)
                if response.status_code in RETRY_STATUSES:
                    problem = _error_from(response, HITLUnavailable)
                    retry_after = _retry_after(response)
                elif response.status_code >= 300:
                    raise _error_from(response, HITLError)
                else:
                    return _Reply(
                        data=_json_object(response),
                        status=response.status_code,
                        received=time.monotonic(),
                        server_time=_server_time(response),
                    )
            if attempt >= self.retries:
                problem.detail += f" (gave up after {attempt + 1} attempts)"
                raise problem
            delay = min(self.max_backoff, self.backoff * 2**attempt) * random.uniform(0.75, 1.25)
            if retry_after is not None:
                delay = max(delay, min(retry_after, MAX_WAIT_S))
            logger.warning("%s; retrying in %.1f s", problem, delay)
            yield _Sleep(delay)
            attempt += 1

    # Drivers

    def _new_async_http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base_url,
            headers=self._headers,
            timeout=self.timeout,
            transport=cast(httpx.AsyncBaseTransport | None, self._transport),
        )

    def _new_sync_http(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url,
            headers=self._headers,
            timeout=self.timeout,
            transport=cast(httpx.BaseTransport | None, self._transport),
        )

    @asynccontextmanager
    async def _async_session(self) -> AsyncIterator[httpx.AsyncClient]:
        if self._async_http is not None:
            yield self._async_http
            return
        async with self._new_async_http() as http:
            yield http

    @contextmanager
    def _sync_session(self) -> Iterator[httpx.Client]:
        if self._sync_http is not None:
            yield self._sync_http
            return
        with self._new_sync_http() as http:
            yield http

    def _request_options(self, send: _Send) -> dict[str, Any]:
        options: dict[str, Any] = {"params": send.params}
        if send.json is not None:
            options["json"] = send.json
        if send.read_timeout:
            options["timeout"] = httpx.Timeout(self.timeout, read=self.timeout + send.read_timeout)
        return options

    async def _drive_async(self, flow: _Flow[T]) -> T:
        async with self._async_session() as http:
            done, value = _advance(flow, None)
            while not done:
                outcome: Any = None
                if isinstance(value, _Sleep):
                    await asyncio.sleep(value.seconds)
                else:
                    try:
                        outcome = await http.request(value.method, value.path, **self._request_options(value))
                    except RETRYABLE_ERRORS as error:
                        outcome = error
                    except httpx.HTTPError as error:
                        raise HITLError(
                            None, "transport_error", f"{type(error).__name__}: {error}"
                        ) from error
                done, value = _advance(flow, outcome)
            return cast(T, value)

    def _drive_sync(self, flow: _Flow[T]) -> T:
        with self._sync_session() as http:
            done, value = _advance(flow, None)
            while not done:
                outcome: Any = None
                if isinstance(value, _Sleep):
                    time.sleep(value.seconds)
                else:
                    try:
                        outcome = http.request(value.method, value.path, **self._request_options(value))
                    except RETRYABLE_ERRORS as error:
                        outcome = error
                    except httpx.HTTPError as error:
                        raise HITLError(
                            None, "transport_error", f"{type(error).__name__}: {error}"
                        ) from error
                done, value = _advance(flow, outcome)
            return cast(T, value)


def _advance(flow: _Flow[Any], outcome: Any) -> tuple[bool, Any]:
    """Resume `flow` with `outcome`: (False, its next step), or (True, its result)."""
    try:
        return False, flow.send(outcome)
    except StopIteration as stop:
        return True, stop.value


# Building requests and reading answers


def _request_body(
    *,
    tool_name: str,
    arguments: Mapping[str, Any],
    session_id: str,
    call_id: str | None,
    reason: str,
    agent: str,
    timeout_s: float | None,
    on_expire: str | None,
    correlation_id: str | None,
    causation_id: str | None = None,
) -> dict[str, Any]:
    if not isinstance(tool_name, str) or not tool_name:
        raise ValueError("tool_name must be a non-empty string")
    if not isinstance(session_id, str) or not session_id:
        raise ValueError(f"session_id must be a non-empty string, not {session_id!r}")
    if not isinstance(arguments, Mapping):
        raise TypeError(f"arguments must be a mapping of argument names to values, not {type(arguments)}")
    arguments = dict(arguments)
    check_json(arguments, "arguments")
    if on_expire not in (None, "reject", "approve"):
        raise ValueError(f"on_expire must be 'reject' or 'approve', not {on_expire!r}")
    if timeout_s is not None and (
        isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not timeout_s > 0
    ):
        raise ValueError(f"timeout_s must be a positive number of seconds, not {timeout_s!r}")
    body: dict[str, Any] = {
        "session_id": session_id,
        "call_id": call_id if call_id is not None else str(uuid.uuid4()),
        "tool_name": tool_name,
        "arguments": arguments,
        "reason": reason,
        "agent": agent,
    }
    if timeout_s is not None:
        body["timeout_s"] = timeout_s
    if on_expire is not None:
        body["on_expire"] = on_expire
    if correlation_id is not None:
        body["correlation_id"] = correlation_id
    if causation_id is not None:
        body["causation_id"] = causation_id
    return body


def check_json(value: Any, path: str = "arguments") -> None:
    """Raise TypeError naming the first part of `value` that JSON cannot carry faithfully."""
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{path} is {value}, which JSON cannot carry")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{path} has the key {key!r}; JSON object keys must be strings")
            check_json(item, f"{path}[{key!r}]")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_json(item, f"{path}[{index}]")
        return
    raise TypeError(f"{path} is a {type(value).__name__} ({value!r:.80}), which is not JSON-serialisable")


def _request_path(call_id: str) -> str:
    return f"{REQUESTS_PATH}{quote(call_id, safe='')}/"


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise HITLError(
            response.status_code, "invalid_response", f"expected a JSON object, got {response.text[:200]!r}"
        )
    return data


def _check_request(data: dict[str, Any], call_id: str) -> dict[str, Any]:
    if data.get("call_id") != call_id or not isinstance(data.get("status"), str):
        raise _invalid_response(f"expected approval request {call_id!r}, got {data!r:.200}")
    return data


def _error_from(response: httpx.Response, kind: type[HITLError]) -> HITLError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "detail" in body:
        code = str(body.get("code") or f"http_{response.status_code}")
        detail = str(body["detail"])
    else:
        code = f"http_{response.status_code}"
        detail = response.text[:200] or response.reason_phrase
    return kind(
        response.status_code, code, f"{response.request.method} {response.request.url.path}: {detail}"
    )


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return None


def _server_time(response: httpx.Response) -> datetime | None:
    value = response.headers.get("Date")
    if not value:
        return None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _local_deadline(reply: _Reply) -> float:
    """The request's expires_at on this process's monotonic clock.

    Read on the server's clock where possible, since the agent's wall clock may be off: against the
    Date header (whole seconds, so one more is added), or, for a request just created, its created_at.
    """
    expires_at = _moment(reply.data, "expires_at")
    if reply.server_time is not None:
        return reply.received + (expires_at - reply.server_time).total_seconds() + 1.0
    if reply.status == 201:
        return reply.received + (expires_at - _moment(reply.data, "created_at")).total_seconds()
    return reply.received + (expires_at - datetime.now(UTC)).total_seconds()


def _moment(data: dict[str, Any], key: str) -> datetime:
    raw = data.get(key)
    try:
        moment = datetime.fromisoformat(str(raw))
    except ValueError:
        raise _invalid_response(f"{key} {raw!r} is not an ISO 8601 time") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# The decorator


def require_approval(
    client: HITLClient,
    *,
    session_id: str | Callable[[], str],
    tool_name: str | None = None,
    reason: str = "",
    timeout_s: float | None = None,
    agent: str = "",
    on_expire: str | None = None,
    correlation_id: str | Callable[[], str | None] | None = None,
    call_id: Callable[[], str | None] | None = None,
    causation_id: Callable[[], str | None] | None = None,
    exclude: Iterable[str] = (),
) -> Callable[[F], F]:
    """Run the wrapped tool (sync or async) only once a person approves the call.

    Each call's arguments, bound by name (defaults included), are sent for approval. Approved: the
    function runs with the arguments it was called with; edited: with the operator's arguments, as
    keyword arguments; rejected, expired with on_expire="reject", or cancelled: it never runs and
    `ApprovalRejected` is raised. `session_id` (and `correlation_id`, `call_id`) may be callables,
    asked on every call, as `causation_id` is (it returns the id of the `tool_execution_requested` the
    runtime published for this call, or None); `exclude` names parameters (a context object, `self`)
    that are neither sent nor editable. Arguments that JSON cannot carry raise TypeError before the
    server is contacted.
    """
    excluded = frozenset(exclude)

    def decorate(func: F) -> F:
        name = tool_name or func.__name__
        signature = inspect.signature(func)
        unknown = excluded - set(signature.parameters)
        if unknown:
            raise ValueError(f"exclude names {sorted(unknown)}, which {func.__qualname__} does not take")

        def ask(
            args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> tuple[inspect.BoundArguments, dict[str, Any]]:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return bound, {
                "tool_name": name,
                "arguments": _proposed(signature, bound, excluded),
                "session_id": _value(session_id),
                "call_id": _value(call_id),
                "reason": reason,
                "agent": agent,
                "timeout_s": timeout_s,
                "on_expire": on_expire,
                "correlation_id": _value(correlation_id),
                "causation_id": _value(causation_id),
            }

        def call_with(
            decision: ApprovalDecision,
            bound: inspect.BoundArguments,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
        ) -> tuple[tuple[Any, ...], dict[str, Any]]:
            if not decision.approved:
                raise ApprovalRejected(decision)
            if decision.status != EDITED:
                return args, kwargs
            return _edited_call(signature, bound, decision, excluded, name)

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                bound, request = ask(args, kwargs)
                decision = await client.request_approval(**request)
                run_args, run_kwargs = call_with(decision, bound, args, kwargs)
                return await func(*run_args, **run_kwargs)

            return cast(F, async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound, request = ask(args, kwargs)
            decision = client.request_approval_sync(**request)
            run_args, run_kwargs = call_with(decision, bound, args, kwargs)
            return func(*run_args, **run_kwargs)

        return cast(F, wrapper)

    return decorate


def _value(value: Any) -> Any:
    return value() if callable(value) else value


def _proposed(
    signature: inspect.Signature, bound: inspect.BoundArguments, excluded: frozenset[str]
) -> dict[str, Any]:
    """The call's arguments by name: *args as a list under its name, **kwargs spread out."""
    proposed: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        if name in excluded:
            continue
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            proposed.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            proposed[name] = list(value)
        else:
            proposed[name] = value
    return proposed


def _edited_call(
    signature: inspect.Signature,
    bound: inspect.BoundArguments,
    decision: ApprovalDecision,
    excluded: frozenset[str],
    tool_name: str,
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The positional and keyword arguments for the edited call; HITLError if the tool cannot take them."""
    edited = dict(decision.arguments)
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    # Parameters before *args must go by position when it is filled; elsewhere by keyword.
    positional = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in signature.parameters.values())
    var_keyword = False
    for name, parameter in signature.parameters.items():
        kind = parameter.kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            var_keyword = True
            continue
        if name in excluded:
            present, value = name in bound.arguments, bound.arguments.get(name)
        else:
            present, value = name in edited, edited.pop(name, None)
        if not present:
            positional = False  # a gap: what follows can only go by keyword
            continue
        if kind is inspect.Parameter.VAR_POSITIONAL:
            if not isinstance(value, list | tuple):
                raise _invalid_edit(tool_name, f"{name} must be a list, not {type(value).__name__}")
            args.extend(value)
        elif kind is inspect.Parameter.POSITIONAL_ONLY or (
            positional and kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        ):
            args.append(value)
        else:
            kwargs[name] = value
    if edited and not var_keyword:
        raise _invalid_edit(tool_name, f"{sorted(edited)} are not parameters of the tool")
    kwargs.update(edited)
    try:
        signature.bind(*args, **kwargs)
    except TypeError as error:
        raise _invalid_edit(tool_name, str(error)) from None
    return tuple(args), kwargs


def _invalid_edit(tool_name: str, message: str) -> HITLError:
    return HITLError(None, "invalid_edit", f"the edited arguments do not fit {tool_name}: {message}")
