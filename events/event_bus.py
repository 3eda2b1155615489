"""The process-wide async event bus.

One bus lives on one event loop. Fire-and-forget events go through one bounded queue, drained by one
consumer task, so they reach handlers in publish order and memory stays bounded. `wait_for_handlers=True`
runs the handlers in the publisher's task when nothing is queued ahead of the event (the fast path), and
otherwise waits for its turn in the queue, so both modes keep one order.

Handlers run one after another, highest priority first. A handler that raises or overruns its timeout is
logged on the `events` logger and counted; the others still run. Plain (non-async) handlers run in a
worker thread, so they may use the Django ORM.

A bus may be given a `Transport` (with REDIS_URL, `events.redis_transport.RedisTransport`): what it
accepts is then also sent to the other processes of the deployment, and what they publish is delivered
here, marked `remote`. Without one it is a bus of this process alone.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import inspect
import logging
import math
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future as ThreadFuture
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, overload

from asgiref.sync import SyncToAsync

from .base import BaseEvent, ensure_json_safe
from .event_types import EventType

logger = logging.getLogger("events")

Handler = Callable[[BaseEvent], Any]
Middleware = Callable[[BaseEvent], Awaitable[BaseEvent | None] | BaseEvent | None]
OverflowPolicy = Literal["wait", "drop"]
# A queued event, the future its waiting publisher awaits (if any), and whether middleware is still due.
_QueueItem = tuple[BaseEvent, "asyncio.Future[None] | None", bool]
# A handler as dispatch calls it: the callable, whether to await it directly (async, no timeout), its
# timeout, and its name for the log.
_Route = tuple[Handler, bool, float | None, str]
# The consumer yields to the loop after this many events in a row.
YIELD_EVERY = 256
_get_ident = threading.get_ident
_UNCHANGED = object()
# The statistics count this many distinct event types one by one (those the project defines always), the
# rest under OTHER_TYPES: made-up types must not grow /api/stats/ and memory without bound.
DEFAULT_MAX_STATS_TYPES = 1_000
OTHER_TYPES = "other"
_KNOWN_TYPES = frozenset(str(member.value) for member in EventType)

# The event whose handlers are running in this context: events published from inside a handler
# inherit its correlation id and name it as their cause.
_current_event: ContextVar[BaseEvent | None] = ContextVar("events_current_event", default=None)


# While the handlers of an event whose publisher waits run: more things that publisher waits for.
_completions: ContextVar[list[Awaitable[Any]] | None] = ContextVar("events_completions", default=None)


def current_event() -> BaseEvent | None:
    """The event whose handler is running in this context, if any."""
    return _current_event.get()


def wait_also(awaitable: Awaitable[Any]) -> bool:
    """From a handler: make a publisher that waits for handlers wait for `awaitable` too.

    The store uses it so that `publish(e, wait_for_handlers=True)` returns only once `e` is committed,
    without holding up the handlers of other events meanwhile. Returns False (and the publisher does
    not wait) when the event was published fire-and-forget. An exception of `awaitable` is raised to
    the publisher.
    """
    pending = _completions.get()
    if pending is None:
        return False
    pending.append(awaitable)
    return True


def _is_async_callable(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004


def _handler_name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _run_sync_handler(handler: Handler, event: BaseEvent) -> Any:
    """Run a plain handler in a worker thread with a usable Django database connection."""
    close_old = _django_close_old_connections()
    if close_old is not None:
        close_old()
    try:
        return handler(event)
    finally:
        if close_old is not None:
            close_old()


def _django_close_old_connections() -> Callable[[], None] | None:
    try:
        from django.conf import settings

        if not settings.configured:
            return None
        from django.db import close_old_connections
    except ImportError:
        return None
    return close_old_connections


_run_sync_in_thread = SyncToAsync(_run_sync_handler, thread_sensitive=False)


def _chain(source: asyncio.Future[Any], target: asyncio.Future[None]) -> None:
    def copy_outcome(finished: asyncio.Future[Any]) -> None:
        if target.done():
            return
        if finished.cancelled():
            target.cancel()
        elif (error := finished.exception()) is not None:
            target.set_exception(error)
        else:
            target.set_result(None)

    source.add_done_callback(copy_outcome)


class Transport(Protocol):
    """What carries a bus's events to the other processes and theirs back (`EventBus(transport=...)`).

    The bus calls `attach(bus)` once; the transport delivers what it receives with `await
    bus.receive(event)`. Sending never raises because the other side is away: the transport keeps,
    drops and counts as it sees fit (its figures are the bus statistics' `distributed`).
    """

    def attach(self, bus: EventBus) -> None:
        """Be the transport of `bus` (its loop is where it runs)."""

    def start(self) -> None:
        """Start on the bus's loop soon, without waiting (idempotent)."""

    async def initialize(self, timeout: float = ...) -> bool:
        """Start and wait up to `timeout` s until the other processes are heard; whether they are."""

    async def send(self, events: Sequence[BaseEvent]) -> None:
        """Queue events the bus accepted for the other processes (may wait for room, never for them)."""

    def send_sync(self, events: Sequence[BaseEvent], timeout: float | None) -> None:
        """`send` from synchronous code, any thread."""

    def announce_commit(self, position: int) -> None:
        """Tell the other processes this one committed events up to `position` (any thread)."""

    def on_remote_commit(self, callback: Callable[[int], Any]) -> Callable[[int], Any]:
        """Call `callback(position)` when another process says it committed events up to `position`."""

    async def close(self, timeout: float | None = ...) -> None:
        """Send what is queued (up to `timeout` s), then disconnect; `initialize()` starts again."""

    async def shutdown(self, timeout: float | None) -> None:
        """Called at the end of `EventBus.shutdown(timeout)`: close, within the transport's own limit."""

    def reset(self) -> None:
        """Forget the connections and what is queued (the bus's loop is going away; for tests)."""

    def reset_stats(self) -> None:
        """Set the transport's counters back to zero."""

    def stats(self) -> dict[str, Any]:
        """The transport's state and counters."""


class BusStats(dict[str, Any]):
    """A snapshot of the bus statistics: a dict that also reads as attributes (`stats.total_published`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass(slots=True)
class Subscription:
    """One handler with what it listens to (None: any), its priority and optional timeout in seconds."""

    handler: Handler
    event_type: str | None
    event_category: str | None
    priority: int
    timeout: float | None
    is_async: bool
    order: int
    name: str = field(default="")

    def matches(self, event_type: str, event_category: str) -> bool:
        return (self.event_type is None or self.event_type == event_type) and (
            self.event_category is None or self.event_category == event_category
        )


class EventBus:
    """Async publish/subscribe with priorities, categories, wildcards, middleware and statistics."""

    def __init__(
        self,
        *,
        max_queue_size: int = 10_000,
        overflow: OverflowPolicy = "wait",
        handler_timeout: float | None = None,
        max_stats_types: int = DEFAULT_MAX_STATS_TYPES,
        transport: Transport | None = None,
    ) -> None:
        # Set first: reset_stats() resets the transport's counters too.
        self.transport: Transport | None = None
        self._subscriptions: list[Subscription] = []
        self._middleware: list[tuple[Middleware, bool]] = []
        self._handler_cache: dict[tuple[str, str], tuple[_Route, ...]] = {}
        self._order = 0
        self._lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._thread: threading.Thread | None = None
        self._shutdown_hooks: list[Callable[[float | None], Awaitable[Any]]] = []
        self._items: deque[_QueueItem]
        self._space_waiters: deque[asyncio.Future[None]]
        self._idle_waiters: list[asyncio.Future[None]]
        self._consumer_wakeup: asyncio.Future[None] | None
        self._consumer: asyncio.Task[None] | None
        self._pending: int
        self._reset_queue()
        self.configure(
            max_queue_size=max_queue_size,
            overflow=overflow,
            handler_timeout=handler_timeout,
            max_stats_types=max_stats_types,
        )
        self.reset_stats()
        if transport is not None:
            self.set_transport(transport)

    def set_transport(self, transport: Transport | None) -> None:
        """Send what this bus accepts through `transport` too, and deliver what it receives (None: local).

        The bus keeps its subscriptions, middleware, loop and statistics: every module holds the one
        process-wide `event_bus` object, so a transport is given to it rather than a new bus made.
        """
        current = self.transport
        if current is transport:
            return
        if current is not None:
            current.reset()
        self.transport = transport
        if transport is not None:
            transport.attach(self)

    def configure(
        self,
        *,
        max_queue_size: int | None = None,
        overflow: OverflowPolicy | None = None,
        handler_timeout: float | None | object = _UNCHANGED,
        max_stats_types: int | None = None,
    ) -> None:
        """Set the queue bound, the policy for a full queue ("wait" or "drop"), the default timeout, and
        how many distinct event types the statistics count one by one (the rest under "other").

        Arguments left out keep their value; `handler_timeout=None` means no default timeout.
        """
        if max_stats_types is not None:
            if (
                not isinstance(max_stats_types, int)
                or isinstance(max_stats_types, bool)
                or max_stats_types < 1
            ):
                raise ValueError(f"max_stats_types must be a positive integer, not {max_stats_types!r}")
            self.max_stats_types = max_stats_types
        if max_queue_size is not None:
            if not isinstance(max_queue_size, int) or isinstance(max_queue_size, bool) or max_queue_size < 1:
                raise ValueError(f"max_queue_size must be a positive integer, not {max_queue_size!r}")
            self.max_queue_size = max_queue_size
        if overflow is not None:
            if overflow not in ("wait", "drop"):
                raise ValueError(f"overflow must be 'wait' or 'drop', not {overflow!r}")
            self.overflow: OverflowPolicy = overflow
        if handler_timeout is not _UNCHANGED:
            if handler_timeout is not None and (
                not isinstance(handler_timeout, int | float)
                or isinstance(handler_timeout, bool)
                or handler_timeout <= 0
            ):
                raise ValueError(
                    f"handler_timeout must be a positive number or None, not {handler_timeout!r}"
                )
            self.handler_timeout: float | None = handler_timeout
            self._handler_cache = {}

    # Subscriptions

    @overload
    def subscribe(
        self,
        event_type: str | None = None,
        event_category: str | None = None,
        handler: None = None,
        priority: int = 0,
        timeout: float | None = None,
    ) -> Callable[[Handler], Handler]: ...

    @overload
    def subscribe(
        self,
        event_type: str | None = None,
        event_category: str | None = None,
        handler: Handler = ...,
        priority: int = 0,
        timeout: float | None = None,
    ) -> Handler: ...

    def subscribe(
        self,
        event_type: str | None = None,
        event_category: str | None = None,
        handler: Handler | None = None,
        priority: int = 0,
        timeout: float | None = None,
    ) -> Any:
        """Subscribe `handler` (or decorate one) to a type, a category, both, or neither (every event).

        `timeout` (seconds) overrides the bus's default; `math.inf` means never time out.
        """
        if handler is None:

            def decorator(fn: Handler) -> Handler:
                self.subscribe(event_type, event_category, fn, priority, timeout)
                return fn

            return decorator
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise TypeError(f"priority must be an integer, not {type(priority).__name__}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        with self._lock:
            self._order += 1
            self._subscriptions.append(
                Subscription(
                    handler=handler,
                    event_type=None if event_type is None else str(event_type),
                    event_category=None if event_category is None else str(event_category),
                    priority=priority,
                    timeout=timeout,
                    is_async=_is_async_callable(handler),
                    order=self._order,
                    name=_handler_name(handler),
                )
            )
            self._handler_cache = {}
        return handler

    def unsubscribe(
        self,
        event_type: str | None = None,
        event_category: str | None = None,
        handler: Handler | None = None,
    ) -> int:
        """Remove the subscriptions that match all the given arguments; return how many were removed."""
        if event_type is None and event_category is None and handler is None:
            raise TypeError("unsubscribe needs a handler, an event_type or an event_category")

        def selected(sub: Subscription) -> bool:
            return (
                (handler is None or sub.handler == handler)
                and (event_type is None or sub.event_type == str(event_type))
                and (event_category is None or sub.event_category == str(event_category))
            )

        with self._lock:
            kept = [sub for sub in self._subscriptions if not selected(sub)]
            removed = len(self._subscriptions) - len(kept)
            self._subscriptions = kept
            self._handler_cache = {}
        return removed

    def clear(self) -> None:
        """Remove every subscription (middleware and statistics stay)."""
        with self._lock:
            self._subscriptions = []
            self._handler_cache = {}

    def add_middleware(self, middleware: Middleware) -> Middleware:
        """Add a middleware, run on each event in the order added: returns the event, another, or None."""
        if not callable(middleware):
            raise TypeError(f"middleware must be callable, not {type(middleware).__name__}")
        with self._lock:
            self._middleware.append((middleware, _is_async_callable(middleware)))
        return middleware

    def remove_middleware(self, middleware: Middleware) -> None:
        """Remove a middleware added before."""
        with self._lock:
            self._middleware = [(mw, a) for mw, a in self._middleware if mw != middleware]

    def clear_middleware(self) -> None:
        """Remove every middleware."""
        with self._lock:
            self._middleware = []

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        """The current subscriptions, in the order they were made."""
        return tuple(self._subscriptions)

    def _routes_for(self, event_type: str, event_category: str) -> tuple[_Route, ...]:
        with self._lock:
            matching = [sub for sub in self._subscriptions if sub.matches(event_type, event_category)]
            matching.sort(key=lambda sub: (-sub.priority, sub.order))
            routes: list[_Route] = []
            for sub in matching:
                timeout = self.handler_timeout if sub.timeout is None else sub.timeout
                if timeout == math.inf:
                    timeout = None
                routes.append((sub.handler, sub.is_async and timeout is None, timeout, sub.name))
            result = tuple(routes)
            self._handler_cache[(event_type, event_category)] = result
        return result

    # Statistics

    def reset_stats(self) -> None:
        """Set every counter back to zero."""
        self._published = 0
        self._dropped_by_middleware = 0
        self._dropped_queue_full = 0
        self._lost = 0
        self._middleware_errors = 0
        self._successful = 0
        self._failed = 0
        self._timed_out = 0
        self._by_type: dict[str, int] = {}
        if self.transport is not None:
            self.transport.reset_stats()

    def get_stats(self) -> BusStats:
        """A snapshot of the counters, the queue depth and the subscriptions (with a transport, its
        figures under `distributed`)."""
        stats = BusStats(
            total_published=self._published,
            total_dropped=self._dropped_by_middleware + self._dropped_queue_full + self._lost,
            dropped_by_middleware=self._dropped_by_middleware,
            dropped_queue_full=self._dropped_queue_full,
            lost_on_stopped_loop=self._lost,
            middleware_errors=self._middleware_errors,
            successful_handlers=self._successful,
            failed_handlers=self._failed,
            timed_out_handlers=self._timed_out,
            events_by_type={str(key): count for key, count in self._by_type.items()},
            queue_depth=len(self._items),
            queue_max_size=self.max_queue_size,
            overflow_policy=self.overflow,
            pending=self._pending,
            subscriptions=len(self._subscriptions),
            middleware=len(self._middleware),
        )
        if self.transport is not None:
            stats["distributed"] = self.transport.stats()
        return stats

    # Publishing

    async def publish(
        self, event: BaseEvent, wait_for_handlers: bool = False, distribute: bool = True
    ) -> bool:
        """Publish `event`; with `wait_for_handlers`, return once every handler has run.

        With a transport, the accepted event then goes to the other processes too, unless `distribute`
        is False (or it came from one, or is a replay). Returns False when a middleware dropped the
        event or a full queue with the "drop" policy refused it, True otherwise. Raises
        TypeError/ValueError, naming the key, when the event's data cannot be carried as JSON.
        """
        if self.transport is not None and distribute:
            return await self._publish_and_send(event, wait_for_handlers)
        if not isinstance(event, BaseEvent):
            raise TypeError(f"publish takes a BaseEvent, not {type(event).__name__}")
        loop = self._loop
        if loop is None or self._loop_thread != _get_ident() or not loop.is_running() or self._middleware:
            return await self._publish_slow(event, wait_for_handlers)

        # The common path, inlined: the caller runs on the bus loop and there is no middleware.
        parent = _current_event.get()
        if event.replayed:
            pass
        elif parent is not None and parent is not event:
            if event.causation_id is None:
                event.causation_id = parent.event_id
            if event.correlation_id is None:
                event.correlation_id = parent.correlation_id or parent.event_id
        if event.correlation_id is None and not event.replayed:
            event.correlation_id = event.event_id
        ensure_json_safe(event.data)
        self._published += 1
        count = self._by_type.get(event.event_type)
        if count is None:
            self._count_new_type(event.event_type)
        else:
            self._by_type[event.event_type] = count + 1
        if wait_for_handlers:
            if self._pending == 0:
                await self._dispatch_waited(event)
                return True
            return await self._wait_in_queue(event)
        items = self._items
        if len(items) >= self.max_queue_size:
            return await self._enqueue(event, None)
        items.append((event, None, False))
        self._pending += 1
        wakeup = self._consumer_wakeup
        if wakeup is not None:
            self._consumer_wakeup = None
            if not wakeup.done():
                wakeup.set_result(None)
        elif self._consumer is None:
            self._start_consumer()
        return True

    async def _publish_and_send(self, event: BaseEvent, wait_for_handlers: bool) -> bool:
        accepted = await self.publish(event, wait_for_handlers, distribute=False)
        transport = self.transport
        if accepted and transport is not None and not (event.remote or event.replayed):
            await transport.send((event,))
        return accepted

    async def receive(self, event: BaseEvent) -> bool:
        """Deliver an event another process published to this process's subscribers, marked `remote`.

        Its publisher stored it (the store skips remote events) and it is never sent on again.
        """
        event.remote = True
        return await self.publish(event, distribute=False)

    async def _publish_slow(self, event: BaseEvent, wait_for_handlers: bool) -> bool:
        """Publish with middleware, or from a loop the bus is not bound to (binding or handing over)."""
        self._stamp(event)
        running = asyncio.get_running_loop()
        loop = self._loop
        if loop is not running and (loop is None or loop.is_closed() or not loop.is_running()):
            loop = self.bind(running)
        if loop is running:
            return await self._publish_here(event, wait_for_handlers)
        # The bus lives on another thread's loop (its own thread, or the server's): hand the event over.
        future = asyncio.run_coroutine_threadsafe(self._publish_here(event, wait_for_handlers), loop)
        return await asyncio.wrap_future(future)

    def publish_sync(
        self,
        event: BaseEvent,
        wait_for_handlers: bool = False,
        timeout: float | None = None,
        distribute: bool = True,
    ) -> bool:
        """Publish from plain synchronous code (a sync view, a management command, a worker thread).

        Blocks until the event is queued, or with `wait_for_handlers` until its handlers have run. With no
        event loop anywhere, the bus starts its own in a daemon thread and drains it at exit. With a
        transport, the accepted event then goes to the other processes too (as with `publish`).
        """
        accepted = self._publish_sync_here(event, wait_for_handlers, timeout)
        transport = self.transport
        if accepted and distribute and transport is not None and not (event.remote or event.replayed):
            transport.send_sync((event,), timeout)
        return accepted

    def _publish_sync_here(self, event: BaseEvent, wait_for_handlers: bool, timeout: float | None) -> bool:
        if not isinstance(event, BaseEvent):
            raise TypeError(f"publish takes a BaseEvent, not {type(event).__name__}")
        self._stamp(event)
        loop, running = self._loop_for_sync()
        if loop is running:
            # Synchronous code running on the bus loop itself cannot block it: queue without waiting.
            if wait_for_handlers:
                raise RuntimeError("inside the bus's event loop, use `await event_bus.publish(...)`")
            return self._publish_nowait(event)
        future: ThreadFuture[bool] = asyncio.run_coroutine_threadsafe(
            self._publish_here(event, wait_for_handlers), loop
        )
        return future.result(timeout)

    def _loop_for_sync(self) -> tuple[asyncio.AbstractEventLoop, asyncio.AbstractEventLoop | None]:
        """The bus's loop for a synchronous publisher, bound or started if none runs; and the caller's own."""
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        with self._lock:
            loop = self._loop
            if loop is None or loop.is_closed() or not loop.is_running():
                loop = self.bind(running) if running is not None else self._start_own_loop()
        return loop, running

    def publish_many_sync(
        self, events: Sequence[BaseEvent], timeout: float | None = None, distribute: bool = True
    ) -> list[bool]:
        """`publish_sync` of several events, in list order, with one hand-over to the bus's loop.

        Each `publish_sync` from a worker thread waits for the loop to take its event; a transaction's
        events (a request a rule decided has two) then cost one such wait, not one each. Blocks until all
        are queued. Returns one result per event, as `publish_sync` does.
        """
        events = list(events)
        for event in events:
            if not isinstance(event, BaseEvent):
                raise TypeError(f"publish takes a BaseEvent, not {type(event).__name__}")
            self._stamp(event)
        loop, running = self._loop_for_sync()
        if loop is running:
            # Synchronous code running on the bus loop itself cannot block it: queue without waiting.
            results = [self._publish_nowait(event) for event in events]
        else:
            future: ThreadFuture[list[bool]] = asyncio.run_coroutine_threadsafe(
                self._publish_many_here(events, False), loop
            )
            results = future.result(timeout)
        transport = self.transport
        if distribute and transport is not None:
            outgoing = [
                event
                for event, accepted in zip(events, results, strict=True)
                if accepted and not (event.remote or event.replayed)
            ]
            if outgoing:
                transport.send_sync(tuple(outgoing), timeout)
        return results

    def stamp(self, event: BaseEvent) -> BaseEvent:
        """Give `event` the causation and correlation publishing would give it (idempotent)."""
        self._stamp(event)
        return event

    def _stamp(self, event: BaseEvent) -> None:
        if event.replayed:
            return  # a replayed event keeps the ids it was stored with
        parent = _current_event.get()
        if parent is not None and parent is not event:
            if event.causation_id is None:
                event.causation_id = parent.event_id
            if event.correlation_id is None:
                event.correlation_id = parent.correlation_id or parent.event_id
        if event.correlation_id is None:
            # A root event starts its own trace: its followers will carry its id.
            event.correlation_id = event.event_id

    async def _publish_here(self, event: BaseEvent, wait_for_handlers: bool) -> bool:
        """Publish on the bus's own loop (the caller runs on it); the event is stamped already."""
        if self._middleware:
            changed = await self._run_middleware(event)
            if changed is None:
                return False
            event = changed
        ensure_json_safe(event.data)
        self._count_published(event)
        if wait_for_handlers:
            if self._pending == 0:
                await self._dispatch_waited(event)
                return True
            return await self._wait_in_queue(event)
        return await self._enqueue(event, None)

    async def _dispatch_waited(self, event: BaseEvent) -> None:
        """Run the handlers in this task, then wait for what they asked the publisher to wait for."""
        extra: list[Awaitable[Any]] = []
        token = _completions.set(extra)
        try:
            await self._dispatch(event)
        finally:
            _completions.reset(token)
        if extra:
            await asyncio.gather(*extra)

    async def publish_many(
        self, events: list[BaseEvent], wait_for_handlers: bool = False, distribute: bool = True
    ) -> list[bool]:
        """Publish `events` in list order; with `wait_for_handlers`, return once all were handled.

        Unlike awaiting `publish` for each, the waiting happens once at the end, so the store commits
        the whole list in a few batches. Returns one result per event, as `publish` does. With a
        transport, the accepted events then go to the other processes too, in list order.
        """
        events = list(events)
        results = await self._publish_many_local(events, wait_for_handlers)
        transport = self.transport
        if distribute and transport is not None:
            outgoing = [
                event
                for event, accepted in zip(events, results, strict=True)
                if accepted and not (event.remote or event.replayed)
            ]
            if outgoing:
                await transport.send(outgoing)
        return results

    async def _publish_many_local(self, events: list[BaseEvent], wait_for_handlers: bool) -> list[bool]:
        for event in events:
            if not isinstance(event, BaseEvent):
                raise TypeError(f"publish_many takes BaseEvents, not {type(event).__name__}")
        for event in events:
            self._stamp(event)
        running = asyncio.get_running_loop()
        loop = self._loop
        if loop is not running and (loop is None or loop.is_closed() or not loop.is_running()):
            loop = self.bind(running)
        if loop is running:
            return await self._publish_many_here(events, wait_for_handlers)
        future = asyncio.run_coroutine_threadsafe(self._publish_many_here(events, wait_for_handlers), loop)
        return await asyncio.wrap_future(future)

    async def _publish_many_here(self, events: list[BaseEvent], wait_for_handlers: bool) -> list[bool]:
        results: list[bool] = []
        waits: list[asyncio.Future[None]] = []
        loop = asyncio.get_running_loop()
        for event in events:
            if self._middleware:
                changed = await self._run_middleware(event)
                if changed is None:
                    results.append(False)
                    continue
                event = changed
            ensure_json_safe(event.data)
            self._count_published(event)
            done: asyncio.Future[None] | None = loop.create_future() if wait_for_handlers else None
            accepted = await self._enqueue(event, done)
            results.append(accepted)
            if accepted and done is not None:
                waits.append(done)
        if waits:
            await asyncio.gather(*waits)
        return results

    def _count_published(self, event: BaseEvent) -> None:
        self._published += 1
        count = self._by_type.get(event.event_type)
        if count is None:
            self._count_new_type(event.event_type)
        else:
            self._by_type[event.event_type] = count + 1

    def _count_new_type(self, event_type: str) -> None:
        """Count the first event of a type: under its own name while there is room, else under "other"."""
        by_type = self._by_type
        # At most max_stats_types names, "other" included (and, besides, the types the project defines).
        if (
            event_type not in _KNOWN_TYPES
            and len(by_type) + (OTHER_TYPES not in by_type) >= self.max_stats_types
        ):
            event_type = OTHER_TYPES
        by_type[event_type] = by_type.get(event_type, 0) + 1

    def _publish_nowait(self, event: BaseEvent) -> bool:
        """Queue from synchronous code on the bus loop; middleware, being async, runs when it is handled."""
        run_middleware = bool(self._middleware)
        if not run_middleware:
            ensure_json_safe(event.data)
        if len(self._items) >= self.max_queue_size:
            self._refuse(event)
            return False
        if not run_middleware:
            self._count_published(event)
        self._push((event, None, run_middleware))
        return True

    async def _wait_in_queue(self, event: BaseEvent) -> bool:
        """Queue an event whose publisher waits for its handlers, behind the events queued before it."""
        assert self._loop is not None
        done: asyncio.Future[None] = self._loop.create_future()
        if not await self._enqueue(event, done):
            return False
        await done
        return True

    async def _enqueue(self, event: BaseEvent, done: asyncio.Future[None] | None) -> bool:
        items = self._items
        if len(items) >= self.max_queue_size:
            if self.overflow == "drop":
                self._refuse(event)
                return False
            loop = self._loop
            assert loop is not None
            while len(items) >= self.max_queue_size:
                room: asyncio.Future[None] = loop.create_future()
                self._space_waiters.append(room)
                await room
        self._push((event, done, False))
        return True

    def _refuse(self, event: BaseEvent) -> None:
        self._dropped_queue_full += 1
        logger.warning("event bus queue is full (%d): dropped %s", self.max_queue_size, event.event_id)

    def _push(self, item: _QueueItem) -> None:
        self._items.append(item)
        self._pending += 1
        wakeup = self._consumer_wakeup
        if wakeup is not None:
            self._consumer_wakeup = None
            if not wakeup.done():
                wakeup.set_result(None)
        elif self._consumer is None:
            self._start_consumer()

    async def _run_middleware(self, event: BaseEvent) -> BaseEvent | None:
        for middleware, is_async in self._middleware:
            try:
                result = middleware(event)
                if is_async or inspect.isawaitable(result):
                    result = await result  # type: ignore[misc]
            except Exception:
                self._middleware_errors += 1
                logger.exception(
                    "event middleware %s failed on %s", _handler_name(middleware), event.event_id
                )
                continue
            if result is None:
                self._dropped_by_middleware += 1
                logger.debug("event %s dropped by middleware %s", event.event_id, _handler_name(middleware))
                return None
            if not isinstance(result, BaseEvent):
                self._middleware_errors += 1
                logger.error(
                    "event middleware %s returned %s, not an event or None; ignored",
                    _handler_name(middleware),
                    type(result).__name__,
                )
                continue
            event = result
        return event

    async def _dispatch(self, event: BaseEvent) -> None:
        routes = self._handler_cache.get((event.event_type, event.event_category))
        if routes is None:
            routes = self._routes_for(event.event_type, event.event_category)
        if not routes:
            return
        succeeded = 0
        token = _current_event.set(event)
        try:
            for handler, direct, timeout, name in routes:
                try:
                    if direct:
                        await handler(event)
                    else:
                        await self._call_guarded(handler, timeout, event)
                    succeeded += 1
                except TimeoutError:
                    if timeout is None:  # the handler's own TimeoutError, not ours
                        self._failed += 1
                        logger.exception(
                            "event handler %s failed on %s %s", name, event.event_type, event.event_id
                        )
                        continue
                    self._timed_out += 1
                    logger.error(
                        "event handler %s timed out after %ss on %s %s",
                        name,
                        timeout,
                        event.event_type,
                        event.event_id,
                    )
                except Exception:
                    self._failed += 1
                    logger.exception(
                        "event handler %s failed on %s %s", name, event.event_type, event.event_id
                    )
        finally:
            self._successful += succeeded
            _current_event.reset(token)

    @staticmethod
    async def _call_guarded(handler: Handler, timeout: float | None, event: BaseEvent) -> None:
        """A plain handler (in a worker thread) or one with a timeout."""
        if _is_async_callable(handler):
            call = handler(event)
        else:
            call = _run_sync_in_thread(handler, event)
        if timeout is None:
            await call
        else:
            await asyncio.wait_for(call, timeout)

    # The loop, the queue and the consumer

    def bind(
        self, loop: asyncio.AbstractEventLoop, thread_id: int | None = None
    ) -> asyncio.AbstractEventLoop:
        """Make `loop` (running in `thread_id`, by default this thread) the one handlers run on."""
        with self._lock:
            current = self._loop
            if current is loop:
                return loop
            if current is not None and self._pending:
                # The loop that held them stopped without draining (asyncio.run returned without
                # `await event_bus.shutdown()`, a test's loop ended): they can no longer run.
                logger.warning(
                    "event bus rebinding: %d undelivered events of a stopped loop lost", self._pending
                )
                self._lost += self._pending
            self._loop = loop
            self._loop_thread = _get_ident() if thread_id is None else thread_id
            self._reset_queue()
            return loop

    def _reset_queue(self) -> None:
        self._items = deque()
        self._space_waiters = deque()
        self._idle_waiters = []
        self._consumer_wakeup = None
        self._consumer = None
        self._pending = 0  # queued events plus the one the consumer is handling

    def _start_consumer(self) -> None:
        assert self._loop is not None
        # A context of its own: the consumer must not inherit the publisher's current event.
        self._consumer = self._loop.create_task(
            self._consume(), name="event-bus-consumer", context=contextvars.Context()
        )

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        items = self._items
        space_waiters = self._space_waiters
        handled = 0
        while True:
            if not items:
                idle = self._idle_waiters
                if idle:
                    self._idle_waiters = []
                    for waiter in idle:
                        if not waiter.done():
                            waiter.set_result(None)
                wakeup = loop.create_future()
                self._consumer_wakeup = wakeup
                await wakeup
                handled = 0
                continue
            event, done, run_middleware = items.popleft()
            while space_waiters:
                room = space_waiters.popleft()
                if not room.done():
                    room.set_result(None)
                    break
            extra: list[Awaitable[Any]] | None = None
            try:
                if run_middleware:
                    changed = await self._run_middleware(event)
                    if changed is not None:
                        ensure_json_safe(changed.data)
                        self._count_published(changed)
                        await self._dispatch(changed)
                elif done is None:
                    await self._dispatch(event)
                else:
                    extra = []
                    token = _completions.set(extra)
                    try:
                        await self._dispatch(event)
                    finally:
                        _completions.reset(token)
            except asyncio.CancelledError:
                self._pending -= 1
                if done is not None and not done.done():
                    done.cancel()
                raise
            except Exception as error:
                # _dispatch isolates handlers; this is unsafe data from middleware, or a bug in the bus.
                self._failed += 1
                logger.exception("event bus failed to deliver %s", event.event_id)
                if done is not None and not done.done():
                    done.set_exception(error)
            self._pending -= 1
            if done is not None and not done.done():
                if extra:
                    # Resolve the publisher's future when the extras finish, without holding up the queue.
                    _chain(asyncio.gather(*extra), done)
                else:
                    done.set_result(None)
            handled += 1
            if handled >= YIELD_EVERY:
                # A long burst must not starve the server's other tasks (requests, WebSockets).
                handled = 0
                await asyncio.sleep(0)

    async def _wait_idle(self) -> None:
        if self._pending == 0:
            return
        assert self._loop is not None
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._idle_waiters.append(waiter)
        await waiter

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until every accepted event has been handled; False if `timeout` ran out first."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return True
        waiter: Awaitable[Any]
        if loop is asyncio.get_running_loop():
            waiter = self._wait_idle()
        elif loop.is_running():
            waiter = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._wait_idle(), loop))
        else:
            return self._pending == 0
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            return False
        return True

    def drain_sync(self, timeout: float | None = None) -> bool:
        """Block until every accepted event has been handled (from a thread that is not the bus's)."""
        loop = self._loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return self._pending == 0
        future = asyncio.run_coroutine_threadsafe(asyncio.wait_for(self._wait_idle(), timeout), loop)
        try:
            future.result()
        except TimeoutError:
            return False
        return True

    def on_shutdown(self, hook: Callable[[float | None], Awaitable[Any]]) -> None:
        """Run `await hook(timeout)` at the end of `shutdown` (the store commits what it buffered)."""
        if hook not in self._shutdown_hooks:
            self._shutdown_hooks.append(hook)

    async def shutdown(self, timeout: float | None = 30.0) -> bool:
        """Drain the queue, then stop the consumer; call when the server stops so nothing accepted is lost."""
        drained = await self.drain(timeout)
        for hook in list(self._shutdown_hooks):
            try:
                await hook(timeout)
            except Exception:
                logger.exception("event bus shutdown hook %s failed", _handler_name(hook))
        consumer = self._consumer
        if consumer is not None and not consumer.done() and consumer.get_loop() is asyncio.get_running_loop():
            consumer.cancel()
            try:
                await consumer
            except asyncio.CancelledError:
                pass
        self._consumer = None
        self._consumer_wakeup = None
        if self.transport is not None:
            # After the hooks: the store's last commit is announced to the other processes.
            await self.transport.shutdown(timeout)
        return drained

    def _start_own_loop(self) -> asyncio.AbstractEventLoop:
        """Start a loop in a daemon thread for code that has none (management commands, scripts)."""
        loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(started.set)
            try:
                loop.run_forever()
            finally:
                loop.close()

        thread = threading.Thread(target=run, name="event-bus", daemon=True)
        thread.start()
        started.wait()
        self._thread = thread
        self.bind(loop, thread_id=thread.ident)
        # Drain at exit before concurrent.futures refuses new work (its own exit hook runs after this
        # one), so that handlers using worker threads, like the store's writer, still run.
        register = getattr(threading, "_register_atexit", None)
        try:
            if register is None:
                raise RuntimeError
            register(self._stop_own_loop, loop)
        except RuntimeError:  # no such hook, or the interpreter is already exiting
            atexit.register(self._stop_own_loop, loop)
        return loop

    def _stop_own_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop.is_closed() or not loop.is_running():
            return
        try:
            asyncio.run_coroutine_threadsafe(self.shutdown(timeout=30.0), loop).result(timeout=35.0)
        except Exception:
            logger.exception("event bus could not drain its queue at exit")
        loop.call_soon_threadsafe(loop.stop)

    def reset(self) -> None:
        """Forget subscriptions, middleware, statistics and the bound loop (for tests).

        A transport stays (it is the process's wiring) but forgets its connections and what it queued.
        """
        with self._lock:
            own = self._thread
            if own is not None and self._loop is not None and self._loop.is_running():
                # Stopped first, while its shutdown hooks (the store's writer) are still registered.
                self._stop_own_loop(self._loop)
                own.join(timeout=5)
            self.clear()
            self.clear_middleware()
            self.reset_stats()
            self._shutdown_hooks = []
            self._thread = None
            self._loop = None
            self._loop_thread = None
            self._reset_queue()
        if self.transport is not None:
            self.transport.reset()


event_bus = EventBus()
