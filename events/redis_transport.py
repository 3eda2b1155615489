"""The Redis Pub/Sub transport of the event bus: every process of a deployment hears the others' events.

Each process keeps its own local bus; a `RedisTransport` given to it (`EventBus(transport=...)`, or
`event_bus.set_transport(...)` at start-up when REDIS_URL is set) runs a relay on the bus's loop:

- a sender task: events this process published (and accepted) go into a bounded outbox; the sender
  takes them out in batches and sends each batch as ONE `PUBLISH` of
  `{"origin": <this process>, "events": [<contract JSON>, ...], "committed": <position, optional>}`;
- a listener task: `SUBSCRIBE`s to the channel and delivers other processes' events to the local
  subscribers only (`bus.receive`), marked `remote` (the store skips them: their publisher stored
  them already), each event once (an LRU of recent event ids drops duplicates, this process's own
  ones included), and calls the `on_remote_commit` callbacks when another process says it committed
  events.

Redis is a convenience, the store is the source of truth: publishing never waits for Redis and never
raises because of it. While Redis is away, the outbox keeps the newest `OUTBOX_SIZE` events (the
oldest are dropped and counted), both tasks reconnect with backoff (0.1 s doubling to 2 s), and one
warning is logged per outage. A process that missed events reads them back from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import threading
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .base import BaseEvent

if TYPE_CHECKING:
    from .event_bus import EventBus

logger = logging.getLogger("events")

DEFAULT_CHANNEL = "eventbus:events"
OUTBOX_SIZE = 10_000  # events kept for Redis while it is away; the oldest go first
SEND_BATCH = 1_000  # events per PUBLISH at most
SEEN_SIZE = 100_000  # recent event ids remembered to drop duplicates
BACKOFF_START_S = 0.1
BACKOFF_MAX_S = 2.0
CONNECT_TIMEOUT_S = 2.0
SOCKET_TIMEOUT_S = 5.0
LISTEN_POLL_S = 1.0
HEALTH_CHECK_S = 15  # the subscriber pings an idle connection, so a silent network loss is noticed
INITIALIZE_TIMEOUT_S = 2.0
CLOSE_FLUSH_TIMEOUT_S = 2.0
# Bad messages on the channel are logged while there are few of them, then every this many.
INVALID_LOG_EVERY = 1_000

_NETWORK_ERRORS = (RedisError, OSError)
RemoteCommitCallback = Callable[[int], Any]


def _redacted(url: str) -> str:
    """The URL without its password, for the log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


class _Relay:
    """The Redis side of a bus on one event loop: a sender and a listener task and their state.

    A new loop (each test has one) gets a new relay; the old one is forgotten with its loop, so no
    task or connection of a closed loop is ever awaited or reused.
    """

    def __init__(self, transport: RedisTransport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self.loop = loop
        self.thread = threading.get_ident()
        self.redis_url: str = transport.redis_url or ""
        self.channel = transport.channel
        self.wakeup = asyncio.Event()
        self.wake_scheduled = False
        self.idle = asyncio.Event()  # the sender found nothing to send, or is failing
        self.room = asyncio.Event()  # the sender took a batch out of the outbox, or is failing
        self.subscribed = asyncio.Event()
        self.sending = False
        self.publisher_failing = False
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.tasks = [
            self.loop.create_task(self._send_loop(), name="event-bus-redis-sender"),
            self.loop.create_task(self._listen_loop(), name="event-bus-redis-listener"),
        ]

    def wake_from_loop(self) -> None:
        self.wake_scheduled = False
        self.wakeup.set()

    def abandon(self) -> None:
        """Stop the tasks without awaiting them (from any thread; the loop may be closed)."""
        loop = self.loop
        if loop.is_closed():
            return
        if self.thread == threading.get_ident():
            self.room.set()  # publishers waiting for room see that this relay is gone
            for task in self.tasks:
                task.cancel()
        elif loop.is_running():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self.room.set)
                for task in self.tasks:
                    loop.call_soon_threadsafe(task.cancel)

    async def stop(self) -> None:
        """Cancel the tasks and wait (a little) for them to close their connections (on the relay's loop)."""
        pending = {task for task in self.tasks if not task.done()}
        for _ in range(3):
            if not pending:
                return
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        logger.error("distributed bus: %d Redis tasks did not stop", len(pending))

    async def flushed(self) -> None:
        """Until everything queued for Redis was sent, or sending fails."""
        transport = self.transport
        while not self.publisher_failing and (self.sending or transport._has_outgoing()):
            self.idle.clear()
            self.wakeup.set()
            await self.idle.wait()

    def _client(self, **options: Any) -> aioredis.Redis:
        # No retries of redis-py's own: a failure comes back at once and the loops back off themselves.
        # No socket_timeout either: redis-py then sends through asyncio.wait_for, which on Python 3.11
        # swallows a cancellation that arrives as the send completes, so the task could never be
        # stopped (a test's loop could not close). The calls are bounded with asyncio.timeout here.
        return aioredis.Redis.from_url(
            self.redis_url,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 0),
            **options,
        )

    async def _send_loop(self) -> None:
        transport = self.transport
        client: aioredis.Redis | None = None
        delay = BACKOFF_START_S
        try:
            while True:
                _stop_if_cancelled()
                events, committed = transport._take_outgoing()
                if not events and committed is None:
                    self.sending = False
                    self.idle.set()
                    self.wakeup.clear()
                    if transport._has_outgoing():
                        continue
                    await self.wakeup.wait()
                    continue
                self.sending = True
                self.idle.clear()
                self.room.set()
                payload, count = transport._encode(events, committed)
                if payload is None:
                    continue
                try:
                    if client is None:
                        client = self._client()
                    async with asyncio.timeout(SOCKET_TIMEOUT_S):
                        await client.publish(self.channel, payload)
                except _NETWORK_ERRORS as error:
                    transport._put_back(events, committed)
                    transport._publish_failed(self, error, delay)
                    self.publisher_failing = True
                    self.sending = False
                    self.idle.set()
                    self.room.set()
                    if client is not None:
                        await _close_quietly(client)
                        client = None
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, BACKOFF_MAX_S)
                    continue
                if self.publisher_failing:
                    self.publisher_failing = False
                    transport._reconnected("publisher")
                delay = BACKOFF_START_S
                transport._sent += count
                if committed is not None:
                    transport._commits_sent += 1
        finally:
            self.sending = False
            if client is not None:
                await _close_quietly(client)

    async def _listen_loop(self) -> None:
        transport = self.transport
        delay = BACKOFF_START_S
        failing = False
        while True:
            _stop_if_cancelled()
            client: aioredis.Redis | None = None
            pubsub: Any = None
            try:
                client = self._client(health_check_interval=HEALTH_CHECK_S)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                async with asyncio.timeout(SOCKET_TIMEOUT_S):
                    await pubsub.subscribe(self.channel)
                self.subscribed.set()
                if failing:
                    failing = False
                    transport._reconnected("subscriber")
                delay = BACKOFF_START_S
                while True:
                    _stop_if_cancelled()
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=LISTEN_POLL_S)
                    if message is not None and message.get("type") == "message":
                        await transport._receive(message["data"])
            except _NETWORK_ERRORS as error:
                self.subscribed.clear()
                if not failing:
                    failing = True
                    transport._subscriber_lost(self, error)
            finally:
                self.subscribed.clear()
                try:
                    if pubsub is not None:
                        await _close_quietly(pubsub)
                finally:
                    if client is not None:
                        await _close_quietly(client)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)


def _stop_if_cancelled() -> None:
    """Stop a relay task that was asked to stop, even if a library swallowed the CancelledError."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def _close_quietly(resource: Any) -> None:
    """Close a Redis client or pubsub; it may be broken already, and closing must never hang.

    A cancellation is not swallowed: the task being stopped must stop.
    """
    try:
        # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation that arrives as the
        # close completes, and the task would go on.
        async with asyncio.timeout(1.0):
            await resource.aclose()
    except (TimeoutError, *_NETWORK_ERRORS):
        pass
    except Exception:
        logger.debug("distributed bus: closing a Redis connection failed", exc_info=True)


class RedisTransport:
    """A bus's transport over one Redis Pub/Sub channel (see the module docstring).

    Without `redis_url` it sends and hears nothing (the bus stays local). Callbacks registered with
    `on_remote_commit(fn)` are called as `fn(position)` on the bus loop when another process committed
    events up to `position`.
    """

    def __init__(self, redis_url: str | None = None, *, channel: str = DEFAULT_CHANNEL) -> None:
        if not channel:
            raise ValueError("the Redis channel of the distributed bus must not be empty")
        self.redis_url = redis_url
        self.channel = channel
        self._bus: EventBus | None = None
        # Unique per transport, so two buses of one process (tests) hear each other too.
        self.origin = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        # Redis sends a bus its own messages back: recognised by their first bytes, without decoding.
        self._own_prefix = f'{{"origin":{json.dumps(self.origin)}'.encode()
        self.outbox_size = OUTBOX_SIZE
        self._outbox_lock = threading.Lock()
        self._outbox: deque[BaseEvent] = deque()
        self._pending_commit: int | None = None
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._commit_callbacks: list[RemoteCommitCallback] = []
        self._relay: _Relay | None = None
        self._relay_requested: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._outbox_full_logged = False
        self.reset_stats()

    def attach(self, bus: EventBus) -> None:
        """Be the transport of `bus`: relay on its loop, deliver to its subscribers."""
        if self._bus is not bus:
            self._forget_relay()
            self._bus = bus

    def configure_redis(self, redis_url: str | None, *, channel: str | None = None) -> None:
        """Point the transport at another Redis or channel; the relay restarts on the next publish."""
        self.redis_url = redis_url
        if channel is not None:
            if not channel:
                raise ValueError("the Redis channel of the distributed bus must not be empty")
            self.channel = channel
        self._forget_relay()

    @property
    def enabled(self) -> bool:
        """Whether there is a Redis to talk to."""
        return self.redis_url is not None

    # Statistics

    def reset_stats(self) -> None:
        """Set the relay's counters back to zero."""
        self._sent = 0
        self._received = 0
        self._duplicates = 0
        self._dropped_outbox = 0
        self._publish_failures = 0
        self._reconnects = 0
        self._invalid = 0
        self._commits_sent = 0
        self._commits_received = 0

    def stats(self) -> dict[str, Any]:
        """The relay's state and counters (the bus statistics' `distributed`)."""
        relay = self._relay
        return {
            "enabled": self.redis_url is not None,
            "connected": relay is not None and relay.subscribed.is_set() and not relay.publisher_failing,
            "channel": self.channel,
            "origin": self.origin,
            "sent": self._sent,
            "received": self._received,
            "duplicates": self._duplicates,
            "dropped": self._dropped_outbox,
            "publish_failures": self._publish_failures,
            "reconnects": self._reconnects,
            "invalid_messages": self._invalid,
            "commits_sent": self._commits_sent,
            "commits_received": self._commits_received,
            "outbox": len(self._outbox),
        }

    # Sending

    async def send(self, events: Sequence[BaseEvent]) -> None:
        """Hand `events` to the sender; while the outbox is full and Redis is up, wait for room.

        Backpressure like the local queue's: a burst faster than Redis takes waits rather than being
        dropped. Only while Redis is away does the outbox drop its oldest events.
        """
        if self.redis_url is None:
            return
        if len(events) == 1 and len(self._outbox) < self.outbox_size:
            self._distribute(events)  # the common case: room for it
            return
        start = 0
        while start < len(events):
            if len(self._outbox) >= self.outbox_size:
                await self._wait_for_room()
            room = self.outbox_size - len(self._outbox)
            end = len(events) if room <= 0 else min(len(events), start + room)
            self._distribute(events[start:end])
            start = end

    def send_sync(self, events: Sequence[BaseEvent], timeout: float | None) -> None:
        """`send` from synchronous code: from another thread it waits (up to `timeout`) for room."""
        if self.redis_url is None:
            return
        if len(self._outbox) >= self.outbox_size:
            self._wait_for_room_sync(timeout)
        self._distribute(events)

    def announce_commit(self, position: int) -> None:
        """Tell the other processes that this one committed events up to `position` (thread-safe).

        Notices waiting to be sent are coalesced into the highest position.
        """
        if self.redis_url is None or self._closed:
            return
        with self._outbox_lock:
            if self._pending_commit is None or position > self._pending_commit:
                self._pending_commit = position
        self._wake_sender()

    def on_remote_commit(self, callback: RemoteCommitCallback) -> RemoteCommitCallback:
        """Call `callback(position)` (on the bus loop) when another process committed events up to it."""
        if callback not in self._commit_callbacks:
            self._commit_callbacks.append(callback)
        return callback

    def _bus_loop(self) -> tuple[asyncio.AbstractEventLoop | None, int | None]:
        """The loop the bus runs on and its thread (the relay runs there too)."""
        bus = self._bus
        if bus is None:
            return None, None
        # The bus's own fields: the transport is its part, not a user of its API.
        return bus._loop, bus._loop_thread

    async def _wait_for_room(self) -> None:
        """Until the outbox has room, unless Redis is away (then the outbox drops its oldest)."""
        if self._relay is None:
            self._start_relay_soon()
        relay = self._relay
        if relay is None or self._closed:
            return
        running = asyncio.get_running_loop()
        if relay.loop is not running:
            if relay.loop.is_running():
                future = asyncio.run_coroutine_threadsafe(self._wait_for_room(), relay.loop)
                await asyncio.wrap_future(future)
            return
        while (
            len(self._outbox) >= self.outbox_size
            and not relay.publisher_failing
            and self._relay is relay
            and not self._closed
        ):
            relay.room.clear()
            relay.wakeup.set()
            await relay.room.wait()

    def _wait_for_room_sync(self, timeout: float | None) -> None:
        """`_wait_for_room` for publish_sync: from another thread it waits; on the bus loop it cannot."""
        relay = self._relay
        if relay is None or relay.thread == threading.get_ident() or not relay.loop.is_running():
            return
        future = asyncio.run_coroutine_threadsafe(self._wait_for_room(), relay.loop)
        with contextlib.suppress(TimeoutError, RuntimeError):
            future.result(timeout)

    def _distribute(self, events: Iterable[BaseEvent]) -> None:
        """Queue events for the sender (any thread); the relay starts here if it has not yet."""
        if self._closed:
            return
        relay = self._relay
        if relay is None or relay.loop is not self._bus_loop()[0]:
            self._start_relay_soon()
        outbox = self._outbox
        seen = self._seen
        with self._outbox_lock:
            for event in events:
                if len(outbox) >= self.outbox_size:
                    outbox.popleft()
                    self._count_dropped()
                outbox.append(event)
                # A copy of this event published by another process too (a retried POST) is not
                # delivered here a second time.
                seen[event.event_id] = None
                if len(seen) > SEEN_SIZE:
                    seen.popitem(last=False)
        self._wake_sender()

    def _count_dropped(self) -> None:
        self._dropped_outbox += 1
        if not self._outbox_full_logged:
            self._outbox_full_logged = True
            logger.warning(
                "distributed bus: the outbox for Redis is full (%d events); dropping the oldest "
                "(other processes can read them from the store)",
                self.outbox_size,
            )

    def _wake_sender(self) -> None:
        relay = self._relay
        if relay is None:
            return  # the relay, when it starts, looks at the outbox first
        if relay.thread == threading.get_ident():
            relay.wakeup.set()
            return
        with self._outbox_lock:
            if relay.wake_scheduled:
                return
            relay.wake_scheduled = True
        try:
            relay.loop.call_soon_threadsafe(relay.wake_from_loop)
        except RuntimeError:  # its loop is closed: the next publish starts a relay on the new one
            relay.wake_scheduled = False

    # The sender's side of the outbox (on the relay's loop)

    def _has_outgoing(self) -> bool:
        return bool(self._outbox) or self._pending_commit is not None

    def _take_outgoing(self) -> tuple[list[BaseEvent], int | None]:
        with self._outbox_lock:
            outbox = self._outbox
            count = min(len(outbox), SEND_BATCH)
            events = [outbox.popleft() for _ in range(count)]
            committed = self._pending_commit
            self._pending_commit = None
        return events, committed

    def _put_back(self, events: list[BaseEvent], committed: int | None) -> None:
        """A send failed: the events go back to the front of the outbox, within its bound."""
        with self._outbox_lock:
            outbox = self._outbox
            room = self.outbox_size - len(outbox)
            if room < len(events):
                for _ in range(len(events) - max(room, 0)):
                    self._count_dropped()
                events = events[len(events) - max(room, 0) :]
            outbox.extendleft(reversed(events))
            if committed is not None and (self._pending_commit is None or committed > self._pending_commit):
                self._pending_commit = committed

    def _encode(self, events: list[BaseEvent], committed: int | None) -> tuple[str | None, int]:
        """The message for a batch, and how many events it carries (None: nothing left to send)."""
        parts: list[str] = []
        for event in events:
            try:
                parts.append(event.to_json())
            except (TypeError, ValueError) as error:  # changed by a handler after it was published
                self._invalid += 1
                logger.error("distributed bus: cannot send %s as JSON: %s", event.event_id, error)
        if not parts and committed is None:
            return None, 0
        head = self._own_prefix.decode()
        if committed is not None:
            head += f',"committed":{int(committed)}'
        return f'{head},"events":[{",".join(parts)}]}}', len(parts)

    def _publish_failed(self, relay: _Relay, error: BaseException, delay: float) -> None:
        self._publish_failures += 1
        if not relay.publisher_failing:
            logger.warning(
                "distributed bus: cannot publish to Redis at %s (%s); local delivery goes on, "
                "events for other processes wait in the outbox (retrying every %.1f-%.0fs)",
                _redacted(relay.redis_url),
                error,
                delay,
                BACKOFF_MAX_S,
            )

    def _subscriber_lost(self, relay: _Relay, error: BaseException) -> None:
        logger.warning(
            "distributed bus: not subscribed to %r at %s (%s); events of other processes are not heard "
            "until Redis is back (they stay readable in the store)",
            relay.channel,
            _redacted(relay.redis_url),
            error,
        )

    def _reconnected(self, side: str) -> None:
        self._reconnects += 1
        self._outbox_full_logged = False
        logger.info("distributed bus: Redis %s reconnected", side)

    # The listener's side

    async def _receive(self, data: bytes | str) -> None:
        """Deliver one message of another process to the local subscribers; never raises on bad input."""
        if isinstance(data, bytes) and data.startswith(self._own_prefix):
            return
        try:
            message = json.loads(data)
        except (TypeError, ValueError, UnicodeDecodeError):
            self._reject("not JSON", data)
            return
        if not isinstance(message, dict) or not isinstance(message.get("origin"), str):
            self._reject("not an object with an origin", data)
            return
        if message["origin"] == self.origin:
            return  # this bus's own message: its subscribers had the events already
        events = message.get("events", [])
        committed = message.get("committed")
        if not isinstance(events, list) or (
            committed is not None
            and (not isinstance(committed, int) or isinstance(committed, bool) or committed < 1)
        ):
            self._reject("events is not a list, or committed not a positive integer", data)
            return
        if not events and committed is None:
            self._reject("neither events nor committed", data)
            return
        for payload in events:
            await self._deliver_remote(payload)
        if committed is not None:
            self._commits_received += 1
            for callback in list(self._commit_callbacks):
                try:
                    callback(committed)
                except Exception:
                    logger.exception("distributed bus: remote commit callback %r failed", callback)

    async def _deliver_remote(self, payload: Any) -> None:
        event_id = payload.get("event_id") if isinstance(payload, dict) else None
        seen = self._seen
        if isinstance(event_id, str) and event_id in seen:
            self._duplicates += 1
            return
        try:
            # Lenient: an event published as a plain BaseEvent under a typed name is delivered here as it
            # was there, rather than refused by its typed class.
            event = BaseEvent.from_dict_lenient(payload)
        except (TypeError, ValueError) as error:
            self._reject(f"a bad event ({error})", payload)
            return
        with self._outbox_lock:
            seen[event.event_id] = None
            if len(seen) > SEEN_SIZE:
                seen.popitem(last=False)
        self._received += 1
        bus = self._bus
        if bus is None:
            return
        try:
            # The local bus only (marked remote): a remote event is never sent on again.
            await bus.receive(event)
        except (TypeError, ValueError) as error:
            self._reject(f"an event the bus refused ({error})", payload)

    def _reject(self, reason: str, data: Any) -> None:
        self._invalid += 1
        if self._invalid <= 10 or self._invalid % INVALID_LOG_EVERY == 0:
            text = data.decode("utf-8", "replace") if isinstance(data, bytes) else repr(data)
            logger.warning(
                "distributed bus: ignored a message on %r: %s (%d so far): %.200s",
                self.channel,
                reason,
                self._invalid,
                text,
            )

    # Starting and stopping

    def start(self) -> None:
        """Start the relay on the bus's loop soon, without waiting (idempotent)."""
        if self._relay is None or self._relay.loop is not self._bus_loop()[0]:
            self._start_relay_soon()

    def _start_relay_soon(self) -> None:
        """Start the relay on the bus's loop: now when called on it, else from that loop's next turn."""
        loop, thread = self._bus_loop()
        if self.redis_url is None or loop is None or loop.is_closed():
            return
        if thread == threading.get_ident() and loop.is_running():
            self._start_relay(loop)
            return
        with self._outbox_lock:
            if self._relay_requested is loop:
                return
            self._relay_requested = loop
        try:
            loop.call_soon_threadsafe(self._start_relay, loop)
        except RuntimeError:  # closed meanwhile
            self._relay_requested = None

    def _start_relay(self, loop: asyncio.AbstractEventLoop) -> _Relay | None:
        """On `loop`: make sure a relay runs there; returns it (None when distribution is off)."""
        if self.redis_url is None or self._closed or loop is not self._bus_loop()[0]:
            return None
        with self._outbox_lock:
            self._relay_requested = None
            current = self._relay
            if current is not None and current.loop is loop:
                return current
            relay = self._relay = _Relay(self, loop)
        if current is not None:
            current.abandon()
        relay.start()
        return relay

    def _forget_relay(self) -> None:
        with self._outbox_lock:
            relay, self._relay = self._relay, None
            self._relay_requested = None
        if relay is not None:
            relay.abandon()

    async def initialize(self, timeout: float = INITIALIZE_TIMEOUT_S) -> bool:
        """Start the relay (idempotent) and wait up to `timeout` s for the subscription.

        Returns whether it is subscribed; never raises because Redis is down: the relay keeps trying.
        """
        bus = self._bus
        if self.redis_url is None or bus is None:
            return False
        self._closed = False
        running = asyncio.get_running_loop()
        loop = bus._loop
        if loop is None or loop.is_closed() or not loop.is_running():
            loop = bus.bind(running)
        if loop is not running:
            # The bus lives on another thread's loop (the server's): start it there.
            future = asyncio.run_coroutine_threadsafe(self.initialize(timeout), loop)
            return await asyncio.wrap_future(future)
        relay = self._start_relay(loop)
        if relay is None:
            return False
        try:
            async with asyncio.timeout(timeout):
                await relay.subscribed.wait()
        except TimeoutError:
            logger.warning(
                "distributed bus: not subscribed to Redis at %s after %.1fs; still trying in the background",
                _redacted(relay.redis_url),
                timeout,
            )
            return False
        return True

    async def close(self, timeout: float | None = CLOSE_FLUSH_TIMEOUT_S) -> None:
        """Send what is queued for Redis (up to `timeout` s, unless Redis is away), then disconnect.

        Publishing goes on locally; `initialize()` starts distributing again.
        """
        self._closed = True
        relay = self._relay
        if relay is None:
            return
        running = asyncio.get_running_loop()
        if relay.loop is not running:
            if relay.loop.is_running():
                future = asyncio.run_coroutine_threadsafe(self.close(timeout), relay.loop)
                await asyncio.wrap_future(future)
            else:
                self._forget_relay()
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await relay.flushed()
        with self._outbox_lock:
            if self._relay is relay:
                self._relay = None
        await relay.stop()

    async def shutdown(self, timeout: float | None) -> None:
        """At the end of the bus's shutdown (after the store's, whose commit it announces): close,
        flushing for at most CLOSE_FLUSH_TIMEOUT_S."""
        await self.close(CLOSE_FLUSH_TIMEOUT_S if timeout is None else min(timeout, CLOSE_FLUSH_TIMEOUT_S))

    def reset(self) -> None:
        """Forget the relay (its loop may be closed) and what it had queued.

        The Redis URL, the channel and the remote-commit callbacks stay: they are the process's wiring.
        """
        self._forget_relay()
        with self._outbox_lock:
            self._outbox.clear()
            self._pending_commit = None
            self._seen.clear()
        self._closed = False
        self._outbox_full_logged = False
