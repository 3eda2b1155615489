"""Publish events from an agent runtime without waiting for the server.

`EventPublisher.publish(event)` checks and encodes the event in the caller (microseconds: no network
I/O there), appends it to a bounded buffer and returns its `event_id`. A background thread sends the
buffer in order, in batches of up to `batch_size`, to `POST /api/events/`: as soon as a batch is full,
or once the oldest buffered event has waited `flush_interval`. One batch is in flight at a time, so the
server stores the events in the order they were published.

Delivery: timeouts, connection errors, 408, 429 and 502/503/504 are retried with the same body (the
same `event_id`s: the server is idempotent on them, so an attempt that committed before its answer was
lost stores nothing twice), after an exponential backoff with full jitter capped at `max_retry_delay`
(longer when the server's `Retry-After` says so), for as long as it takes, until `close()`'s deadline.
Any other answer is final: the server stores a list all or nothing, so when it names the bad events
(`errors[].index` of a 400/403) only those are counted `failed` and logged and the rest is sent again;
otherwise the whole batch is counted `failed` and logged with the server's `detail`. A 413 splits the
batch in two. Either way the publisher carries on with the next batch.

`AsyncEventPublisher` is the same for asyncio code, with a task instead of the thread. The batching and
retry policy is written once, as generators that yield what to do (post a body, wait) and receive the
outcome; the sync and async drivers carry it out (as in `eventbus_client.hitl`).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import math
import random
import re
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, cast

import httpx

__all__ = ["AsyncEventPublisher", "EventPublisher"]

logger = logging.getLogger("eventbus_client.publisher")

EVENTS_PATH = "/api/events/"
MAX_BATCH_SIZE = 1_000  # the server's limit of events per request
MAX_BATCH_BYTES = 4 * 1024 * 1024  # well below the server's body limit (8 MiB by default)
EVENT_KEYS = (
    "event_id",
    "event_type",
    "event_category",
    "timestamp",
    "session_id",
    "correlation_id",
    "causation_id",
    "data",
    "source",
    "version",
)
_EVENT_KEYS = frozenset(EVENT_KEYS)
_STORED_ONLY_KEYS = frozenset({"position"})  # a stored event's; never sent
_TEXT_KEYS = ("event_category", "session_id", "correlation_id", "causation_id", "source", "version")
_EVENT_TYPE = re.compile(r"[a-z][a-z0-9_.]{0,99}")
# Types only the server makes (the contract's trust boundary): refused here rather than failing a batch.
_SERVER_ONLY_TYPES = frozenset(
    {
        "model_changed",
        "audit_purged",
        "tool_approval_required",
        "tool_approval_cancelled",
        "hitl_decision_made",
    }
)
_SERVER_ONLY_PREFIX = "operator_"
JSON_MAX_DEPTH = 64

RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})
SERVER_ERROR_RETRIES = 3  # other 5xx: a few tries, then the batch is failed rather than blocking the stream
MAX_RETRY_AFTER = 300.0
# The codes with which the server names the bad events of a list by index.
PER_EVENT_CODES = frozenset({"invalid_event", "invalid_event_type", "reserved_event_type"})
RETRYABLE_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
DROP_LOG_INTERVAL = 10.0

Overflow = Literal["block", "drop"]
_Item = tuple[bytes, float]  # the event as JSON, and time.monotonic() when it was published


class _Default:
    def __repr__(self) -> str:
        return "<default>"


_DEFAULT: Final = _Default()


# Events: checked and encoded in the caller


def encode_event(event: Any) -> tuple[str, bytes]:
    """(event_id, the event as UTF-8 JSON) for a BaseEvent-shaped dict, or an object with `to_dict()`
    or the contract's attributes. Fills `event_id` (uuid4) and `timestamp` (now, UTC) when missing;
    raises TypeError or ValueError naming the key when the server could not take the event."""
    if isinstance(event, Mapping):
        source: Mapping[str, Any] = event
    else:
        source = _from_object(event)
    payload: dict[str, Any] = {}
    for key, value in source.items():
        if value is None:
            continue
        if key not in _EVENT_KEYS:
            if key in _STORED_ONLY_KEYS:
                continue
            raise ValueError(f"event has the unknown key {key!r}; an event has {', '.join(EVENT_KEYS)}")
        payload[key] = value
    event_type = payload.get("event_type")
    if not isinstance(event_type, str):
        raise TypeError(f"event['event_type'] must be a string, not {type(event_type).__name__}")
    if not _EVENT_TYPE.fullmatch(event_type):
        raise ValueError(f"event['event_type'] {event_type!r:.120} does not match ^[a-z][a-z0-9_.]{{0,99}}$")
    if event_type in _SERVER_ONLY_TYPES or event_type.startswith(_SERVER_ONLY_PREFIX):
        raise ValueError(
            f"event['event_type'] {event_type!r} is made by the server alone; agents cannot publish it"
        )
    event_id = payload.get("event_id")
    if event_id is None:
        event_id = payload["event_id"] = str(uuid.uuid4())
    else:
        try:
            event_id = payload["event_id"] = str(
                event_id if isinstance(event_id, uuid.UUID) else uuid.UUID(event_id)
            )
        except (TypeError, ValueError, AttributeError):
            raise ValueError(f"event['event_id'] {event_id!r:.80} is not a UUID") from None
    timestamp = payload.get("timestamp")
    if timestamp is None:
        payload["timestamp"] = _format_timestamp(datetime.now(UTC))
    elif isinstance(timestamp, datetime):
        payload["timestamp"] = _format_timestamp(timestamp)
    elif isinstance(timestamp, str):
        try:
            datetime.fromisoformat(timestamp)
        except ValueError:
            raise ValueError(f"event['timestamp'] {timestamp!r:.80} is not an ISO 8601 date-time") from None
    else:
        raise TypeError(
            f"event['timestamp'] must be a datetime or an ISO 8601 string, not {type(timestamp).__name__}"
        )
    for key in _TEXT_KEYS:
        value = payload.get(key)
        if value is not None and not isinstance(value, str):
            raise TypeError(f"event[{key!r}] must be a string, not {type(value).__name__}")
    data = payload.get("data")
    if data is not None and type(data) is not dict:
        if not isinstance(data, Mapping):
            raise TypeError(f"event['data'] must be an object (a dict), not {type(data).__name__}")
        payload["data"] = dict(data)
    try:
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        encoded = text.encode("utf-8")  # a lone surrogate fails here
    except (TypeError, ValueError, RecursionError):
        _check_json(payload, "event", 0)  # raises naming the key
        raise
    if "\\u0000" in text or "[" * 8 in text or "{" * 8 in text:
        _check_json(payload, "event", 0)  # a NUL, or maybe nested too deep: look closer
    return event_id, encoded


def _from_object(event: Any) -> Mapping[str, Any]:
    to_dict = getattr(event, "to_dict", None)
    if callable(to_dict):
        result = to_dict()
        if not isinstance(result, Mapping):
            raise TypeError(
                f"{type(event).__name__}.to_dict() returned a {type(result).__name__}, not a dict"
            )
        return result
    found = {key: getattr(event, key) for key in EVENT_KEYS if hasattr(event, key)}
    if "event_type" not in found:
        raise TypeError(
            f"publish() takes an event as a dict, or an object with to_dict() or an event_type attribute, "
            f"not {type(event).__name__}"
        )
    return found


def _format_timestamp(moment: datetime) -> str:
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="microseconds") + "Z"


def _check_json(value: Any, path: str, depth: int) -> None:
    """Raise TypeError or ValueError naming the first part of `value` the server would refuse."""
    if depth > JSON_MAX_DEPTH:
        raise ValueError(f"{path} nests deeper than {JSON_MAX_DEPTH} levels")
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(f"{path} contains a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{path} contains a lone surrogate (not valid Unicode)") from None
    elif value is None or isinstance(value, bool | int):
        return
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path} is {value}, which JSON cannot carry")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{path} has the key {key!r}; JSON object keys must be strings")
            _check_json(key, f"{path} key {key!r:.40}", depth)
            _check_json(item, f"{path}[{key!r}]", depth + 1)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_json(item, f"{path}[{index}]", depth + 1)
    else:
        raise TypeError(f"{path} is a {type(value).__name__} ({value!r:.80}), which is not JSON-serialisable")


# What the policy asks the drivers to do


@dataclass(frozen=True, slots=True)
class _Post:
    body: bytes
    count: int
    timeout: float


@dataclass(frozen=True, slots=True)
class _Wait:
    timeout: float | None  # None: until woken
    seen: int  # the wake-up count when the policy decided to wait: a later wake-up ends the wait at once


_Flow = Generator[_Post | _Wait, Any, None]


@dataclass(frozen=True, slots=True)
class _Verdict:
    kind: Literal["sent", "retry", "split", "fail"]
    reason: str = ""
    retry_after: float | None = None
    bad: frozenset[int] | None = None  # with "fail": the indexes the server named; None: the whole batch
    server_error: bool = False


class _PublisherCore:
    """The buffer, the statistics and the batching and retry policy, shared by both publishers."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        batch_size: int,
        flush_interval: float,
        max_buffer: int,
        overflow: Overflow,
        timeout: float,
        retry_delay: float,
        max_retry_delay: float,
        close_timeout: float | None,
        source: str | None,
    ) -> None:
        if not url or not token:
            raise ValueError("a publisher needs the server's url and an API token")
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH_SIZE}, not {batch_size!r}")
        if not max_buffer >= 1:
            raise ValueError(f"max_buffer must be at least 1, not {max_buffer!r}")
        if overflow not in ("block", "drop"):
            raise ValueError(f"overflow must be 'block' or 'drop', not {overflow!r}")
        if not (flush_interval >= 0 and timeout > 0 and retry_delay > 0 and max_retry_delay >= retry_delay):
            raise ValueError(
                "flush_interval must be >= 0, timeout and retry_delay positive, "
                "and max_retry_delay at least retry_delay"
            )
        if close_timeout is not None and close_timeout < 0:
            raise ValueError(f"close_timeout must be >= 0 or None, not {close_timeout!r}")
        self.url = url.rstrip("/")
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_buffer = max_buffer
        self.overflow = overflow
        self.timeout = timeout
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.close_timeout = close_timeout
        self._source = source
        self._headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": "eventbus-client-publisher",
        }
        self._lock = threading.Lock()
        self._queue: deque[_Item] = deque()
        self._inflight: list[_Item] = []  # taken from the queue, not yet sent or failed
        self._accepted = 0
        self._resolved = 0  # sent + failed; events resolve in publishing order
        self._sent = 0
        self._failed = 0
        self._abandoned = 0  # failed because close()'s deadline came first
        self._dropped = 0
        self._retries = 0
        self._batches = 0
        self._wakes = 0
        self._flush_target = 0
        self._closing = False
        self._deadline: float | None = None  # time.monotonic() by which close() gives up
        self._drop_logged_at = -math.inf
        self._drops_unlogged = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"  # never the token

    def stats(self) -> dict[str, int]:
        """`published` (accepted into the buffer), `sent` (acknowledged with a 201), `failed` (refused by
        the server, or `abandoned` at close()'s deadline), `buffered` (published, not yet sent or failed),
        `dropped` (refused by a full buffer), `retries` (requests sent again), `batches` (acknowledged)."""
        with self._lock:
            return {
                "published": self._accepted,
                "sent": self._sent,
                "failed": self._failed,
                "buffered": self._accepted - self._resolved,
                "dropped": self._dropped,
                "retries": self._retries,
                "batches": self._batches,
                "abandoned": self._abandoned,
            }

    # Hooks of the drivers, called with the lock held

    def _wake_sender(self) -> None:
        raise NotImplementedError

    def _room_made(self) -> None:
        raise NotImplementedError

    def _progress_made(self) -> None:
        raise NotImplementedError

    def _at_exit(self) -> None:
        raise NotImplementedError

    # The caller's side

    def _encode(self, event: Any) -> tuple[str, _Item]:
        if self._source is not None and isinstance(event, Mapping) and event.get("source") is None:
            event = {**event, "source": self._source}
        event_id, body = encode_event(event)
        return event_id, (body, time.monotonic())

    def _put_locked(self, item: _Item) -> None:
        queue = self._queue
        queue.append(item)
        self._accepted += 1
        size = len(queue)
        if size == 1 or size == self.batch_size:
            self._wakes += 1
            self._wake_sender()

    def _drop_locked(self) -> None:
        self._dropped += 1
        self._drops_unlogged += 1
        now = time.monotonic()
        if now - self._drop_logged_at >= DROP_LOG_INTERVAL:
            logger.warning(
                "%r: the buffer of %d events is full; dropped %d event(s) (%d in all)",
                self,
                self.max_buffer,
                self._drops_unlogged,
                self._dropped,
            )
            self._drop_logged_at = now
            self._drops_unlogged = 0

    def _request_flush_locked(self) -> int:
        target = self._accepted
        if target > self._flush_target:
            self._flush_target = target
        self._wakes += 1
        self._wake_sender()
        return target

    def _start_closing_locked(self, timeout: float | None) -> None:
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        self._deadline = deadline if self._deadline is None else min(self._deadline, deadline)
        self._closing = True
        self._wakes += 1
        self._wake_sender()
        self._room_made()  # blocked publishers give up

    def _requeue_inflight_locked(self) -> None:
        """Put the batch in flight back at the front (its sender is gone; same ids, so no duplicates)."""
        self._queue.extendleft(reversed(self._inflight))
        self._inflight = []

    # The sender's side: the policy, as a generator

    def _run(self) -> _Flow:
        """Take batches from the buffer and deliver them, until closed and empty (or past the deadline)."""
        while True:
            with self._lock:
                batch, wait, done = self._take_locked(time.monotonic())
                seen = self._wakes
            if batch is not None:
                yield from self._deliver(batch)
            elif done:
                return
            else:
                yield _Wait(wait, seen)

    def _take_locked(self, now: float) -> tuple[list[_Item] | None, float | None, bool]:
        """(the next batch, or None and how long to wait for one, and whether the sender is done)."""
        queue = self._queue
        if self._deadline is not None and now >= self._deadline:
            self._abandon_locked(list(queue))
            queue.clear()
            return None, None, True
        if not queue:
            return None, None, self._closing
        urgent = self._closing or self._flush_target > self._resolved
        age = now - queue[0][1]
        if not urgent and len(queue) < self.batch_size and age < self.flush_interval:
            return None, self.flush_interval - age, False
        batch: list[_Item] = []
        size = 2
        while queue and len(batch) < self.batch_size:
            size += len(queue[0][0]) + 1
            if batch and size > MAX_BATCH_BYTES:
                break
            batch.append(queue.popleft())
        self._inflight = batch
        self._room_made()
        return batch, None, False

    def _deliver(self, batch: list[_Item]) -> _Flow:
        """Send one batch until every event of it is sent or failed (parts split off by a 413 in order)."""
        parts = [batch]
        attempt = 0
        server_errors = 0
        while parts:
            items = parts[0]
            timeout = self.timeout
            if self._deadline is not None:
                left = self._deadline - time.monotonic()
                if left <= 0:
                    self._give_up(parts)
                    return
                timeout = min(timeout, max(left, 0.05))
            outcome = yield _Post(b"[" + b",".join(item[0] for item in items) + b"]", len(items), timeout)
            verdict = _judge(outcome, len(items))
            if verdict.kind == "sent":
                parts.pop(0)
                self._resolve(parts, sent=len(items), batch=True)
                if attempt:
                    logger.info("%r: %d events delivered after %d retries", self, len(items), attempt)
                attempt = server_errors = 0
            elif verdict.kind == "split":
                half = len(items) // 2
                parts[0:1] = [items[:half], items[half:]]
            elif verdict.kind == "fail" or (verdict.server_error and server_errors >= SERVER_ERROR_RETRIES):
                bad = verdict.bad if verdict.kind == "fail" else None
                kept = [] if bad is None else [item for index, item in enumerate(items) if index not in bad]
                failed = len(items) - len(kept)
                logger.error(
                    "%r: the server refused %d of %d event(s), which are not retried: %s",
                    self,
                    failed,
                    len(items),
                    verdict.reason,
                )
                if kept:
                    parts[0] = kept  # the list is stored all or nothing: the others go again, at once
                else:
                    parts.pop(0)
                self._resolve(parts, failed=failed)
                attempt = server_errors = 0
            else:  # retry, the same body
                server_errors += verdict.server_error
                delay = random.uniform(0, min(self.max_retry_delay, self.retry_delay * 2 ** min(attempt, 30)))
                if verdict.retry_after is not None:
                    delay = max(delay, min(verdict.retry_after, MAX_RETRY_AFTER))
                log = logger.warning if attempt == 0 or attempt % 10 == 0 else logger.info
                log(
                    "%r: %s; %d events retried in %.2f s (retry %d)",
                    self,
                    verdict.reason,
                    len(items),
                    delay,
                    attempt + 1,
                )
                attempt += 1
                with self._lock:
                    self._retries += 1
                until = time.monotonic() + delay
                while True:
                    with self._lock:
                        end = until if self._deadline is None else min(until, self._deadline)
                        seen = self._wakes
                    left = end - time.monotonic()
                    if left <= 0:
                        break
                    yield _Wait(left, seen)

    def _resolve(
        self, parts: list[list[_Item]], *, sent: int = 0, failed: int = 0, batch: bool = False
    ) -> None:
        with self._lock:
            self._sent += sent
            self._failed += failed
            self._resolved += sent + failed
            self._batches += batch
            self._inflight = [item for part in parts for item in part]
            self._progress_made()

    def _give_up(self, parts: list[list[_Item]]) -> None:
        with self._lock:
            self._abandon_locked([item for part in parts for item in part])
            self._inflight = []

    def _abandon_locked(self, items: list[_Item]) -> None:
        if items:
            logger.error(
                "%r: %d event(s) not delivered by close()'s deadline; counted as failed", self, len(items)
            )
        self._failed += len(items)
        self._abandoned += len(items)
        self._resolved += len(items)
        self._progress_made()


def _judge(outcome: Any, count: int) -> _Verdict:
    """What the answer to a batch means: sent, retry it, split it, or (some of) it failed for good."""
    if isinstance(outcome, BaseException):
        reason = f"{type(outcome).__name__}: {outcome}"
        if isinstance(outcome, RETRYABLE_ERRORS):
            return _Verdict("retry", reason)
        return _Verdict("fail", f"transport error {reason}")
    response = cast(httpx.Response, outcome)
    status = response.status_code
    if 200 <= status < 300:
        return _Verdict("sent")
    code, detail, errors = _error_body(response)
    reason = f"HTTP {status} {code}: {detail}"
    if status in RETRY_STATUSES:
        return _Verdict("retry", reason, retry_after=_retry_after(response))
    if status == 413 and count > 1:
        return _Verdict("split", reason)
    if status >= 500:
        return _Verdict("retry", reason, retry_after=_retry_after(response), server_error=True)
    if status in (400, 403, 422) and code in PER_EVENT_CODES and errors:
        indexes = frozenset(
            error["index"]
            for error in errors
            if isinstance(error, dict) and type(error.get("index")) is int and 0 <= error["index"] < count
        )
        if indexes:
            return _Verdict("fail", reason, bad=indexes)
    return _Verdict("fail", reason)


def _error_body(response: httpx.Response) -> tuple[str, str, list[Any]]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        errors = body.get("errors")
        return (
            str(body.get("code") or f"http_{response.status_code}"),
            str(body.get("detail", ""))[:500],
            errors if isinstance(errors, list) else [],
        )
    return f"http_{response.status_code}", response.text[:200] or response.reason_phrase, []


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return None


# Drivers


def _drive_sync(flow: _Flow, http: httpx.Client, wait: Callable[[_Wait], None]) -> None:
    outcome: Any = None
    while True:
        try:
            step = flow.send(outcome)
        except StopIteration:
            return
        if isinstance(step, _Post):
            try:
                outcome = http.post(EVENTS_PATH, content=step.body, timeout=step.timeout)
            except Exception as error:  # judged by the policy: retried or failed, never the thread's end
                outcome = error
        else:
            wait(step)
            outcome = None


async def _drive_async(flow: _Flow, http: httpx.AsyncClient, wait: Callable[[_Wait], Any]) -> None:
    outcome: Any = None
    while True:
        try:
            step = flow.send(outcome)
        except StopIteration:
            return
        if isinstance(step, _Post):
            try:
                outcome = await http.post(EVENTS_PATH, content=step.body, timeout=step.timeout)
            except Exception as error:
                outcome = error
        else:
            await wait(step)
            outcome = None


def _register_atexit(publisher: _PublisherCore) -> Callable[[], None]:
    """Run the publisher's `_at_exit` when the interpreter exits, without keeping it alive."""
    ref = weakref.ref(publisher)

    def at_exit() -> None:
        alive = ref()
        if alive is not None:
            alive._at_exit()

    atexit.register(at_exit)
    return at_exit


# The publishers


class EventPublisher(_PublisherCore):
    """Publish events to the event bus server in the background, from any thread.

    ```python
    publisher = EventPublisher("http://127.0.0.1:8000", token)
    publisher.publish({"event_type": "tool_execution_completed", "session_id": "s-1", "data": {...}})
    publisher.close()  # or `with EventPublisher(...) as publisher:`; at exit it is done for you
    ```

    `url` is the server, `token` an API token of the `agents` group. `batch_size` (at most 1,000) events
    go per request, sent once a batch is full or its oldest event has waited `flush_interval` seconds.
    `max_buffer` bounds the events waiting; when it is full `publish` blocks (`overflow="block"`) or
    drops the event and counts it (`overflow="drop"`). `timeout` bounds each request; retries wait
    `retry_delay` doubled each time, at most `max_retry_delay` (full jitter). `close_timeout` is how
    long `close()`, the end of a `with` block and the interpreter's exit wait for delivery (None:
    forever). `source` fills the events' `source` when they have none.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        batch_size: int = 500,
        flush_interval: float = 0.2,
        max_buffer: int = 100_000,
        overflow: Overflow = "block",
        timeout: float = 10.0,
        retry_delay: float = 0.2,
        max_retry_delay: float = 10.0,
        close_timeout: float | None = 30.0,
        source: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            url,
            token,
            batch_size=batch_size,
            flush_interval=flush_interval,
            max_buffer=max_buffer,
            overflow=overflow,
            timeout=timeout,
            retry_delay=retry_delay,
            max_retry_delay=max_retry_delay,
            close_timeout=close_timeout,
            source=source,
        )
        self._wake_cond = threading.Condition(self._lock)
        self._room_cond = threading.Condition(self._lock)
        self._progress_cond = threading.Condition(self._lock)
        self._http = httpx.Client(
            base_url=self.url, headers=self._headers, timeout=timeout, transport=transport
        )
        self._thread = threading.Thread(target=self._main, name="eventbus-publisher", daemon=True)
        self._thread.start()
        self._at_exit_hook = _register_atexit(self)

    def publish(self, event: Any, *, timeout: float | None = None) -> str | None:
        """Buffer `event` for sending and return its `event_id` at once (None when it was dropped).

        `event` is a dict with the contract's keys (`event_type` required; `event_id` and `timestamp`
        filled in when missing), or an object with `to_dict()` (a `BaseEvent`) or those attributes. It
        is checked and encoded now: TypeError or ValueError, naming the key, when the server could not
        take it. A full buffer blocks the call (at most `timeout` seconds, then the event is dropped) or,
        with `overflow="drop"`, drops the event at once; dropped events are counted in `stats()`.
        RuntimeError once the publisher is closed.
        """
        event_id, item = self._encode(event)
        with self._lock:
            if self._closing:
                raise RuntimeError(f"{self!r} is closed")
            if len(self._queue) >= self.max_buffer and not self._wait_for_room_locked(timeout):
                self._drop_locked()
                return None
            self._put_locked(item)
        return event_id

    def _wait_for_room_locked(self, timeout: float | None) -> bool:
        # The sender thread itself (a logging handler that publishes) must never wait for itself.
        if self.overflow == "drop" or threading.current_thread() is self._thread:
            return False
        room = self._room_cond.wait_for(lambda: len(self._queue) < self.max_buffer or self._closing, timeout)
        if self._closing:
            raise RuntimeError(f"{self!r} was closed while publish() waited for room")
        return room

    def flush(self, timeout: float | None = None) -> bool:
        """Send what is buffered now and wait until every event published so far is sent or failed.

        True when that happened within `timeout` seconds (None: however long it takes)."""
        with self._lock:
            if self._resolved >= self._accepted:
                return True
            if threading.current_thread() is self._thread:
                return False
            target = self._request_flush_locked()
            return self._progress_cond.wait_for(lambda: self._resolved >= target, timeout)

    def close(self, timeout: float | None | _Default = _DEFAULT) -> bool:
        """Deliver what is buffered (retrying until `timeout`, by default `close_timeout`), then stop.

        Events still undelivered at the deadline are counted as failed (and `abandoned`). Returns True
        when nothing was abandoned. Safe to call again; `publish` raises RuntimeError afterwards."""
        wait = self.close_timeout if isinstance(timeout, _Default) else timeout
        with self._lock:
            self._start_closing_locked(wait)
            deadline = cast(float, self._deadline)
        if threading.current_thread() is not self._thread:
            self._thread.join(None if math.isinf(deadline) else max(0.0, deadline - time.monotonic()) + 1.0)
        atexit.unregister(self._at_exit_hook)
        with self._lock:
            return self._abandoned == 0 and self._resolved >= self._accepted

    def __enter__(self) -> EventPublisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _at_exit(self) -> None:
        with self._lock:
            pending = self._accepted - self._resolved
        if pending:
            logger.info("%r: delivering %d buffered event(s) before the interpreter exits", self, pending)
        self.close()

    # The sender thread

    def _wake_sender(self) -> None:
        self._wake_cond.notify()

    def _room_made(self) -> None:
        self._room_cond.notify_all()

    def _progress_made(self) -> None:
        self._progress_cond.notify_all()

    def _wait(self, step: _Wait) -> None:
        with self._lock:
            if self._wakes == step.seen:
                self._wake_cond.wait(step.timeout)

    def _main(self) -> None:
        try:
            while True:
                try:
                    _drive_sync(self._run(), self._http, self._wait)
                    return
                except Exception:  # a bug: keep delivering rather than die silently
                    logger.exception("%r: the sender failed; starting again", self)
                    with self._lock:
                        self._requeue_inflight_locked()
                    time.sleep(1.0)
        finally:
            self._http.close()


class AsyncEventPublisher(_PublisherCore):
    """`EventPublisher` for asyncio: a task of the event loop sends the batches.

    ```python
    async with AsyncEventPublisher("http://127.0.0.1:8000", token) as publisher:
        await publisher.publish({"event_type": "agent_processing_started", "session_id": "s-1"})
    ```

    `await publish(event)` returns at once when the buffer has room, and otherwise waits for room
    (`overflow="block"`) or drops the event (`overflow="drop"`). `publish_nowait(event)` is the plain
    call for code that cannot await (a callback): it never waits, so a full buffer drops the event
    whatever `overflow` says. `flush` and `close` are awaited; every method belongs to the event loop
    the publisher first publishes on (use `EventPublisher` from other threads). If the loop ends before
    `close()`, what is still buffered is delivered at the interpreter's exit (blocking, at most
    `close_timeout`). Options as `EventPublisher`.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        batch_size: int = 500,
        flush_interval: float = 0.2,
        max_buffer: int = 100_000,
        overflow: Overflow = "block",
        timeout: float = 10.0,
        retry_delay: float = 0.2,
        max_retry_delay: float = 10.0,
        close_timeout: float | None = 30.0,
        source: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            url,
            token,
            batch_size=batch_size,
            flush_interval=flush_interval,
            max_buffer=max_buffer,
            overflow=overflow,
            timeout=timeout,
            retry_delay=retry_delay,
            max_retry_delay=max_retry_delay,
            close_timeout=close_timeout,
            source=source,
        )
        self._transport = transport
        self._wake_event = asyncio.Event()
        self._room_event = asyncio.Event()
        self._progress_event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._at_exit_hook = _register_atexit(self)

    async def publish(self, event: Any, *, timeout: float | None = None) -> str | None:
        """Buffer `event` and return its `event_id` (None when dropped); see `EventPublisher.publish`."""
        event_id, item = self._encode(event)
        self._start()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if self._closing:
                    raise RuntimeError(f"{self!r} is closed")
                if len(self._queue) < self.max_buffer:
                    self._put_locked(item)
                    return event_id
                left = None if deadline is None else deadline - time.monotonic()
                if self.overflow == "drop" or (left is not None and left <= 0):
                    self._drop_locked()
                    return None
                self._room_event.clear()
            try:
                await asyncio.wait_for(self._room_event.wait(), left)
            except TimeoutError:
                pass

    def publish_nowait(self, event: Any) -> str | None:
        """Buffer `event` without waiting: its `event_id`, or None when the buffer was full (dropped)."""
        event_id, item = self._encode(event)
        self._start()
        with self._lock:
            if self._closing:
                raise RuntimeError(f"{self!r} is closed")
            if len(self._queue) >= self.max_buffer:
                self._drop_locked()
                return None
            self._put_locked(item)
        return event_id

    async def flush(self, timeout: float | None = None) -> bool:
        """Send what is buffered now and wait until every event published so far is sent or failed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            target = self._request_flush_locked()
        while True:
            with self._lock:
                if self._resolved >= target:
                    return True
                self._progress_event.clear()
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            try:
                await asyncio.wait_for(self._progress_event.wait(), left)
            except TimeoutError:
                pass

    async def close(self, timeout: float | None | _Default = _DEFAULT) -> bool:
        """Deliver what is buffered (until `timeout`, by default `close_timeout`), then stop the task;
        see `EventPublisher.close`."""
        wait = self.close_timeout if isinstance(timeout, _Default) else timeout
        with self._lock:
            self._start_closing_locked(wait)
            deadline = cast(float, self._deadline)
        task = self._task
        if task is not None and not task.done():
            left = None if math.isinf(deadline) else max(0.0, deadline - time.monotonic()) + 1.0
            try:
                await asyncio.wait_for(asyncio.shield(task), left)
            except TimeoutError:
                pass
        atexit.unregister(self._at_exit_hook)
        with self._lock:
            return self._abandoned == 0 and self._resolved >= self._accepted

    async def __aenter__(self) -> AsyncEventPublisher:
        self._start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # The sender task

    def _start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._main(), name="eventbus-publisher")

    def _wake_sender(self) -> None:
        _set(self._wake_event)

    def _room_made(self) -> None:
        _set(self._room_event)

    def _progress_made(self) -> None:
        _set(self._progress_event)

    async def _wait(self, step: _Wait) -> None:
        if self._wakes != step.seen:
            return
        self._wake_event.clear()
        try:
            await asyncio.wait_for(self._wake_event.wait(), step.timeout)
        except TimeoutError:
            pass

    async def _main(self) -> None:
        async with httpx.AsyncClient(
            base_url=self.url, headers=self._headers, timeout=self.timeout, transport=self._transport
        ) as http:
            while True:
                try:
                    await _drive_async(self._run(), http, self._wait)
                    return
                except Exception:
                    logger.exception("%r: the sender failed; starting again", self)
                    with self._lock:
                        self._requeue_inflight_locked()
                    await asyncio.sleep(1.0)

    def _at_exit(self) -> None:
        """The loop ended without close(): deliver what is left from this thread, blocking."""
        with self._lock:
            if not self._queue and not self._inflight:
                return
            task = self._task
            if task is not None and not task.done() and task.get_loop().is_running():
                logger.error("%r: its event loop still runs at exit; buffered events not delivered", self)
                return
            self._requeue_inflight_locked()
            self._start_closing_locked(self.close_timeout)
            pending = len(self._queue)
        logger.info("%r: delivering %d buffered event(s) before the interpreter exits", self, pending)
        transport = self._transport if isinstance(self._transport, httpx.BaseTransport) else None
        with httpx.Client(
            base_url=self.url, headers=self._headers, timeout=self.timeout, transport=transport
        ) as http:
            _drive_sync(self._run(), http, lambda step: time.sleep(step.timeout or 0.0))


def _set(event: asyncio.Event) -> None:
    try:
        event.set()
    except RuntimeError:  # its loop is closed (delivery at exit): nobody waits any more
        pass
