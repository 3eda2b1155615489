"""Throughput of the in-process event bus, against blinker, Django signals, pyee and a bare await loop.

What is measured: how many events per second reach three trivial async subscribers (each `async def`
adds one to its own counter) when N pre-built `AgentSwitchedEvent`s (default 100,000) are published one
after another on one asyncio loop. Building the events is not timed; the same event objects go to every
contender (the anchors get the event as their payload). Each contender runs `--repeat` times (default 3),
interleaved, with `gc.collect()` before each timing; the best (shortest) run counts. Every run asserts
that each subscriber saw exactly N events, so a contender cannot silently measure nothing.

Contenders:
  - bare await loop: `await handler(e)` for the three handlers, in a for loop: the floor, for reference.
  - this bus, wait: `await bus.publish(e, wait_for_handlers=True)` per event.
  - this bus, fire-and-forget: `await bus.publish(e)` per event, then `await bus.drain()`; the time runs
    until the last event was delivered (the drain is included).
  - blinker (the anchor): `await signal.send_async(None, _sync_wrapper=..., event=e)`.
  - Django: `await django.dispatch.Signal().asend(sender=None, event=e)` (gathers its async receivers).
  - pyee: `AsyncIOEventEmitter.emit(...)`, which schedules one task per listener, then waiting for them.

Goal: this bus at least as fast as blinker in both modes, i.e. `ratio bus/blinker` >= 1.0 for `wait` and
for `fire_and_forget` (the last line printed). For scale, measured earlier on this kind of machine
(2 cores): blinker about 230k events/s, the bare await loop about 1.4M events/s.

Run from the repository root: `.venv/bin/python benchmarks/bus_throughput.py [--events N] [--repeat K]`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import platform
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from importlib.metadata import version

import blinker
from _common import ROOT, positive_int
from asgiref.sync import sync_to_async
from django.dispatch import Signal
from pyee.asyncio import AsyncIOEventEmitter

sys.path.insert(0, str(ROOT))

from events.agent_events import AgentSwitchedEvent  # noqa: E402
from events.base import BaseEvent  # noqa: E402
from events.event_bus import EventBus  # noqa: E402

SUBSCRIBERS = 3
TOPIC = "agent.switched"  # the pyee event name

Counts = list[int]
Contender = Callable[[Sequence[BaseEvent]], Awaitable[float]]


# The subscribers: the same body everywhere, only the signature follows what each library passes.


def event_handler(counts: Counts, index: int) -> Callable[[BaseEvent], Awaitable[None]]:
    """A subscriber of this bus, of pyee and of the bare loop: called with the event."""

    async def handler(event: BaseEvent) -> None:
        counts[index] += 1

    return handler


def blinker_receiver(counts: Counts, index: int) -> Callable[..., Awaitable[None]]:
    """A blinker receiver: called as `receiver(sender, event=e)`."""

    async def receiver(sender: object, event: BaseEvent) -> None:
        counts[index] += 1

    return receiver


def django_receiver(counts: Counts, index: int) -> Callable[..., Awaitable[None]]:
    """A Django receiver: called as `receiver(signal=..., sender=..., event=e)`."""

    async def receiver(signal: Signal, sender: object, event: BaseEvent) -> None:
        counts[index] += 1

    return receiver


def check_counts(name: str, counts: Counts, expected: int) -> None:
    assert counts == [expected] * SUBSCRIBERS, f"{name}: subscribers saw {counts}, expected {expected} each"


def check_bus(name: str, bus: EventBus, expected: int) -> None:
    stats = bus.get_stats()
    assert stats.total_published == expected, f"{name}: published {stats.total_published}"
    assert stats.successful_handlers == expected * SUBSCRIBERS, f"{name}: {stats.successful_handlers} ok"
    assert stats.failed_handlers == 0 and stats.timed_out_handlers == 0, f"{name}: handler errors {stats}"
    assert stats.pending == 0 and stats.queue_depth == 0, f"{name}: undelivered events {stats}"


# The contenders: each sets up outside the timing, times the run, then checks what was delivered.


async def bare_loop(events: Sequence[BaseEvent]) -> float:
    counts = [0] * SUBSCRIBERS
    handlers = tuple(event_handler(counts, i) for i in range(SUBSCRIBERS))
    gc.collect()
    start = time.perf_counter()
    for event in events:
        for handler in handlers:
            await handler(event)
    elapsed = time.perf_counter() - start
    check_counts("bare await loop", counts, len(events))
    return elapsed


async def bus_wait(events: Sequence[BaseEvent]) -> float:
    counts = [0] * SUBSCRIBERS
    bus = EventBus(max_queue_size=10_000)
    for i in range(SUBSCRIBERS):
        bus.subscribe(handler=event_handler(counts, i))
    publish = bus.publish
    gc.collect()
    start = time.perf_counter()
    for event in events:
        await publish(event, wait_for_handlers=True)
    elapsed = time.perf_counter() - start
    check_counts("bus wait", counts, len(events))
    check_bus("bus wait", bus, len(events))
    await bus.shutdown()
    return elapsed


async def bus_fire_and_forget(events: Sequence[BaseEvent]) -> float:
    counts = [0] * SUBSCRIBERS
    bus = EventBus(max_queue_size=10_000)
    for i in range(SUBSCRIBERS):
        bus.subscribe(handler=event_handler(counts, i))
    publish = bus.publish
    gc.collect()
    start = time.perf_counter()
    for event in events:
        await publish(event)
    await bus.drain()
    elapsed = time.perf_counter() - start
    check_counts("bus fire-and-forget", counts, len(events))
    check_bus("bus fire-and-forget", bus, len(events))
    await bus.shutdown()
    return elapsed


async def blinker_signal(events: Sequence[BaseEvent]) -> float:
    counts = [0] * SUBSCRIBERS
    signal = blinker.Signal()
    # blinker keeps weak references by default; these closures have no other owner.
    receivers = [blinker_receiver(counts, i) for i in range(SUBSCRIBERS)]
    for receiver in receivers:
        signal.connect(receiver, weak=False)
    send_async = signal.send_async
    gc.collect()
    start = time.perf_counter()
    for event in events:
        # The sender is positional-only; `_sync_wrapper` would only be used for plain (non-async)
        # receivers, as this bus runs those in a thread; here all are async, so it is never called.
        await send_async(None, _sync_wrapper=sync_to_async, event=event)
    elapsed = time.perf_counter() - start
    check_counts("blinker", counts, len(events))
    return elapsed


async def django_signal(events: Sequence[BaseEvent]) -> float:
    # Signal.connect only reads settings when they are configured (to check **kwargs under DEBUG), and
    # asend never does, so no settings.configure() is needed.
    counts = [0] * SUBSCRIBERS
    signal = Signal()
    receivers = [django_receiver(counts, i) for i in range(SUBSCRIBERS)]
    for receiver in receivers:
        signal.connect(receiver, weak=False)
    asend = signal.asend
    gc.collect()
    start = time.perf_counter()
    for event in events:
        await asend(sender=None, event=event)
    elapsed = time.perf_counter() - start
    check_counts("django", counts, len(events))
    return elapsed


async def pyee_emitter(events: Sequence[BaseEvent]) -> float:
    # emit() is synchronous: it calls each async listener and schedules the coroutine as a task, so
    # nothing has been handled when the emit loop ends. Fair to the fire-and-forget bus (whose time also
    # runs until the last delivery), the time covers emitting all N events and then
    # `wait_for_complete()`, which awaits every outstanding task. pyee has no back-pressure: all
    # 3 * N tasks exist at once, whereas the bus holds at most max_queue_size queued events.
    counts = [0] * SUBSCRIBERS
    emitter = AsyncIOEventEmitter()
    for i in range(SUBSCRIBERS):
        emitter.add_listener(TOPIC, event_handler(counts, i))
    emit = emitter.emit
    gc.collect()
    start = time.perf_counter()
    for event in events:
        emit(TOPIC, event)
    await emitter.wait_for_complete()
    elapsed = time.perf_counter() - start
    check_counts("pyee", counts, len(events))
    return elapsed


CONTENDERS: dict[str, Contender] = {
    "bare await loop (reference)": bare_loop,
    "this bus, wait_for_handlers=True": bus_wait,
    "this bus, fire-and-forget + drain": bus_fire_and_forget,
    "blinker 1.9 send_async (anchor)": blinker_signal,
    "django Signal.asend": django_signal,
    "pyee AsyncIOEventEmitter": pyee_emitter,
}


async def run(events: Sequence[BaseEvent], repeat: int) -> dict[str, float]:
    best = {name: float("inf") for name in CONTENDERS}
    for _ in range(repeat):  # interleaved, so a slow spell of the machine does not hit one contender only
        for name, contender in CONTENDERS.items():
            best[name] = min(best[name], await contender(events))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=positive_int, default=100_000, help="events per run (100000)")
    parser.add_argument("--repeat", type=positive_int, default=3, help="runs per contender; best counts (3)")
    args = parser.parse_args()

    print(
        f"Python {platform.python_version()}, blinker {version('blinker')}, django {version('django')}, "
        f"pyee {version('pyee')}; {SUBSCRIBERS} async subscribers, {args.events:,} events, "
        f"best of {args.repeat}"
    )
    build_start = time.perf_counter()
    events = [
        AgentSwitchedEvent(session_id="s", from_agent="a", to_agent="b", reason="r", confidence="high")
        for _ in range(args.events)
    ]
    print(f"built {len(events):,} events in {time.perf_counter() - build_start:.2f} s (not timed)")

    best = asyncio.run(run(events, args.repeat))

    def rate(name: str) -> float:
        return args.events / best[name]

    width = max(map(len, CONTENDERS))
    print(f"{'contender':<{width}}  {'events/s':>12}  {'time (s)':>9}")
    for name, elapsed in best.items():
        print(f"{name:<{width}}  {rate(name):>12,.0f}  {elapsed:>9.3f}")

    anchor = "blinker 1.9 send_async (anchor)"
    wait = rate("this bus, wait_for_handlers=True") / rate(anchor)
    fire = rate("this bus, fire-and-forget + drain") / rate(anchor)
    print(f"this bus / blinker, wait_for_handlers=True:  {wait:.2f}  (goal >= 1.00)")
    print(f"this bus / blinker, fire-and-forget + drain: {fire:.2f}  (goal >= 1.00)")
    print(f"ratio bus/blinker: wait={wait:.2f} fire_and_forget={fire:.2f}")


if __name__ == "__main__":
    main()
