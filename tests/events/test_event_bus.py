"""The bus: subscriptions, priorities, middleware, isolation, timeouts, ordering, threads, statistics."""

import asyncio
import json
import logging
import threading

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model

from events.agent_events import AgentErrorOccurredEvent, AgentSwitchedEvent
from events.base import BaseEvent
from events.event_bus import EventBus, current_event, event_bus
from events.event_types import EventCategory, EventType
from events.session_events import MessageAddedEvent, SessionCreatedEvent
from events.tool_events import ToolExecutionRequestedEvent


def switched(n: int = 0, **extra) -> AgentSwitchedEvent:
    return AgentSwitchedEvent(session_id=f"s-{n}", from_agent="a", to_agent=f"agent-{n}", **extra)


@pytest.fixture
async def bus():
    """A private bus, so these tests do not depend on the app's default subscribers."""
    bus = EventBus(max_queue_size=100)
    yield bus
    await bus.shutdown(timeout=5)


async def test_subscribe_by_type_category_both_and_wildcard(bus):
    seen: dict[str, list[str]] = {"type": [], "category": [], "both": [], "all": []}

    @bus.subscribe(event_type=EventType.AGENT_SWITCHED)
    async def by_type(event):
        seen["type"].append(event.event_type)

    @bus.subscribe(event_category=EventCategory.SESSION)
    async def by_category(event):
        seen["category"].append(event.event_type)

    bus.subscribe(
        event_type="message_added", event_category="session", handler=lambda e: seen["both"].append(1)
    )

    @bus.subscribe()
    async def everything(event):
        seen["all"].append(event.event_type)

    await bus.publish(switched(), wait_for_handlers=True)
    await bus.publish(SessionCreatedEvent(session_id="s"), wait_for_handlers=True)
    await bus.publish(MessageAddedEvent(session_id="s", role="user"), wait_for_handlers=True)
    assert seen["type"] == ["agent_switched"]
    assert seen["category"] == ["session_created", "message_added"]
    assert seen["both"] == [1]
    assert seen["all"] == ["agent_switched", "session_created", "message_added"]


async def test_handlers_run_from_highest_priority_to_lowest(bus):
    order: list[str] = []
    for name, priority in [("low", 0), ("high", 10), ("normal", 5), ("negative", -3), ("high-second", 10)]:

        async def handler(event, name=name):
            order.append(name)

        bus.subscribe(event_type=EventType.AGENT_SWITCHED, handler=handler, priority=priority)
    await bus.publish(switched(), wait_for_handlers=True)
    assert order == ["high", "high-second", "normal", "low", "negative"]


async def test_a_failing_handler_never_stops_the_others(bus, caplog):
    ran: list[str] = []

    @bus.subscribe(priority=2)
    async def broken(event):
        raise RuntimeError("boom")

    @bus.subscribe(priority=1)
    def broken_sync(event):
        raise ValueError("sync boom")

    @bus.subscribe(priority=0)
    async def fine(event):
        ran.append(event.event_id)

    event = switched()
    with caplog.at_level(logging.ERROR, logger="events"):
        await bus.publish(event, wait_for_handlers=True)
        await bus.publish(switched())
        await bus.drain()
    assert len(ran) == 2 and ran[0] == event.event_id
    stats = bus.get_stats()
    assert stats.failed_handlers == 4 and stats.successful_handlers == 2
    assert "boom" in caplog.text and "broken" in caplog.text


async def test_a_hung_handler_times_out_and_the_bus_goes_on(bus):
    ran: list[int] = []

    @bus.subscribe(timeout=0.05, priority=1)
    async def hung(event):
        await asyncio.sleep(3600)

    @bus.subscribe()
    async def fine(event):
        ran.append(1)

    await bus.publish(switched(), wait_for_handlers=True)
    await bus.publish(switched())
    assert await bus.drain(timeout=5)
    assert ran == [1, 1]
    assert bus.get_stats().timed_out_handlers == 2


async def test_the_bus_wide_default_timeout_applies_to_every_handler():
    bus = EventBus(handler_timeout=0.05)

    @bus.subscribe()
    async def hung(event):
        await asyncio.sleep(3600)

    await bus.publish(switched(), wait_for_handlers=True)
    assert bus.get_stats().timed_out_handlers == 1


async def test_a_handlers_own_timeout_error_is_a_failure_not_a_timeout(bus):
    @bus.subscribe()
    async def raises_timeout(event):
        raise TimeoutError("upstream API")

    await bus.publish(switched(), wait_for_handlers=True)
    stats = bus.get_stats()
    assert (stats.failed_handlers, stats.timed_out_handlers) == (1, 0)


async def test_middleware_changes_drops_and_survives_errors_in_order(bus, caplog):
    calls: list[str] = []
    received: list[BaseEvent] = []

    async def first(event):
        calls.append("first")
        event.data["enriched_at"] = "now"
        return event

    async def broken(event):
        calls.append("broken")
        raise RuntimeError("middleware boom")

    async def replace(event):
        calls.append("replace")
        return BaseEvent("replaced", "system", session_id=event.session_id, data=dict(event.data))

    async def drop_tests(event):
        calls.append("drop")
        return None if event.session_id.startswith("test-") else event

    for middleware in (first, broken, replace, drop_tests):
        bus.add_middleware(middleware)
    bus.subscribe(handler=received.append)

    with caplog.at_level(logging.ERROR, logger="events"):
        assert await bus.publish(SessionCreatedEvent(session_id="real"), wait_for_handlers=True) is True
    assert calls == ["first", "broken", "replace", "drop"]
    assert [(e.event_type, e.data["enriched_at"]) for e in received] == [("replaced", "now")]
    assert "middleware boom" in caplog.text

    assert await bus.publish(SessionCreatedEvent(session_id="test-1")) is False
    await bus.drain()
    assert len(received) == 1
    stats = bus.get_stats()
    assert stats.total_dropped == 1 and stats.dropped_by_middleware == 1 and stats.middleware_errors == 2


async def test_data_that_json_cannot_carry_fails_at_publish(bus):
    event = switched()
    event.data["when"] = object()
    with pytest.raises(TypeError, match=r"data\['when'\]"):
        await bus.publish(event)

    async def bad_middleware(e):
        e.data["set"] = {1, 2}
        return e

    bus.add_middleware(bad_middleware)
    with pytest.raises(TypeError, match=r"data\['set'\]"):
        await bus.publish(switched(), wait_for_handlers=True)


async def test_every_delivered_event_survives_json_as_redis_will_carry_it():
    delivered: list[dict] = []

    @event_bus.subscribe()
    async def capture(event):
        delivered.append(json.loads(json.dumps(event.to_dict())))

    events = [switched(1), AgentErrorOccurredEvent(agent_type="coder", error_message="x")]
    for event in events:
        await event_bus.publish(event, wait_for_handlers=True)
    assert [BaseEvent.from_dict(d) for d in delivered] == events


async def test_unsubscribe_and_clear(bus):
    got: list[str] = []

    async def a(event):
        got.append("a")

    async def b(event):
        got.append("b")

    bus.subscribe(event_type=EventType.AGENT_SWITCHED, handler=a)
    bus.subscribe(event_category=EventCategory.AGENT, handler=b)
    assert bus.unsubscribe(event_type=EventType.AGENT_SWITCHED, handler=a) == 1
    assert bus.unsubscribe(event_type=EventType.AGENT_SWITCHED, handler=a) == 0
    await bus.publish(switched(), wait_for_handlers=True)
    assert got == ["b"]
    bus.clear()
    await bus.publish(switched(), wait_for_handlers=True)
    assert got == ["b"]
    assert bus.get_stats().subscriptions == 0


async def test_fire_and_forget_delivers_in_publish_order_through_one_consumer(bus):
    seen: list[int] = []

    @bus.subscribe()
    async def slow_sometimes(event):
        n = event.data["n"]
        if n % 7 == 0:
            await asyncio.sleep(0.001)
        seen.append(n)

    tasks_before = len(asyncio.all_tasks())
    for n in range(500):
        await bus.publish(BaseEvent("tick", "metrics", data={"n": n}))
    # One consumer task, not a task per event.
    assert len(asyncio.all_tasks()) <= tasks_before + 1
    assert await bus.drain(timeout=10)
    assert seen == list(range(500))


async def test_wait_for_handlers_returns_after_every_handler_and_keeps_publish_order(bus):
    seen: list[str] = []

    @bus.subscribe()
    async def record(event):
        await asyncio.sleep(0.001)
        seen.append(event.session_id)

    for n in range(5):
        await bus.publish(switched(n))
    await bus.publish(switched(99), wait_for_handlers=True)
    # Waited for its own handlers, and the events queued before it were handled first.
    assert seen == ["s-0", "s-1", "s-2", "s-3", "s-4", "s-99"]


async def test_full_queue_with_drop_policy_drops_and_counts():
    bus = EventBus(max_queue_size=10, overflow="drop")
    release = asyncio.Event()
    handled: list[int] = []

    @bus.subscribe()
    async def blocked(event):
        await release.wait()
        handled.append(1)

    results = [await bus.publish(switched(n)) for n in range(30)]
    await asyncio.sleep(0)
    assert results.count(False) >= 19
    assert bus.get_stats().queue_depth <= 10
    release.set()
    await bus.drain()
    stats = bus.get_stats()
    assert stats.dropped_queue_full == results.count(False) == stats.total_dropped
    assert len(handled) == results.count(True)


async def test_full_queue_with_wait_policy_applies_backpressure_and_loses_nothing():
    bus = EventBus(max_queue_size=5, overflow="wait")
    seen: list[int] = []
    depths: list[int] = []

    @bus.subscribe()
    async def slow(event):
        await asyncio.sleep(0)
        depths.append(bus.get_stats().queue_depth)
        seen.append(event.data["n"])

    for n in range(200):
        await bus.publish(BaseEvent("tick", "metrics", data={"n": n}))
    await bus.drain()
    assert seen == list(range(200))
    assert max(depths) <= 5


async def test_statistics(bus):
    bus.subscribe(event_type=EventType.AGENT_SWITCHED, handler=lambda e: None)
    for n in range(3):
        await bus.publish(switched(n), wait_for_handlers=True)
    await bus.publish(SessionCreatedEvent())
    await bus.drain()
    stats = bus.get_stats()
    assert stats.total_published == 4 == stats["total_published"]
    assert stats.events_by_type == {"agent_switched": 3, "session_created": 1}
    assert stats.successful_handlers == 3 and stats.failed_handlers == 0 and stats.timed_out_handlers == 0
    assert stats.queue_depth == 0 and stats.total_dropped == 0
    json.dumps(stats)  # the API will serve it as is


async def test_causation_and_correlation_follow_the_handler_chain(bus):
    published: list[BaseEvent] = []

    @bus.subscribe(event_type=EventType.AGENT_SWITCHED)
    async def on_switch(event):
        assert current_event() is event
        child = ToolExecutionRequestedEvent(tool_name="ls", call_id="c1", session_id=event.session_id)
        published.append(child)
        await bus.publish(child, wait_for_handlers=True)

    @bus.subscribe(event_type=EventType.TOOL_EXECUTION_REQUESTED)
    async def on_tool(event):
        grandchild = AgentErrorOccurredEvent(agent_type="coder", error_message="x")
        published.append(grandchild)
        await bus.publish(grandchild)

    @bus.subscribe(event_type=EventType.AGENT_ERROR_OCCURRED)
    def sync_handler(event):
        explicit = SessionCreatedEvent(causation_id="given", correlation_id="given-corr")
        published.append(explicit)
        bus.publish_sync(explicit)

    root = switched(1, correlation_id="corr-456")
    await bus.publish(root, wait_for_handlers=True)
    await bus.drain()
    await bus.drain()
    child, grandchild, explicit = published
    assert (child.causation_id, child.correlation_id) == (root.event_id, "corr-456")
    assert (grandchild.causation_id, grandchild.correlation_id) == (child.event_id, "corr-456")
    assert (explicit.causation_id, explicit.correlation_id) == ("given", "given-corr")
    assert current_event() is None


async def test_a_root_event_without_correlation_starts_its_own_trace(bus):
    root = switched()
    await bus.publish(root)
    assert root.correlation_id == root.event_id and root.causation_id is None


def test_eight_threads_publishing_a_thousand_events_each_deliver_each_once():
    bus = EventBus(max_queue_size=500)
    seen: list[str] = []
    bus.subscribe(handler=lambda e: None)  # a plain handler too, run in a worker thread

    @bus.subscribe()
    async def record(event):
        seen.append(event.event_id)

    published: list[list[str]] = [[] for _ in range(8)]

    def worker(index: int) -> None:
        for n in range(1000):
            event = BaseEvent("tick", "metrics", data={"thread": index, "n": n})
            bus.publish_sync(event)
            published[index].append(event.event_id)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert bus.drain_sync(timeout=60)
    assert len(seen) == 8000 and len(set(seen)) == 8000
    assert set(seen) == {event_id for ids in published for event_id in ids}
    # Each thread's events arrive in the order that thread published them.
    position = {event_id: i for i, event_id in enumerate(seen)}
    for ids in published:
        assert [position[e] for e in ids] == sorted(position[e] for e in ids)
    bus.reset()


def test_publish_sync_with_wait_returns_after_handlers_from_a_plain_thread():
    bus = EventBus()
    seen: list[str] = []

    @bus.subscribe()
    async def record(event):
        await asyncio.sleep(0.01)
        seen.append(event.event_id)

    event = switched()
    assert bus.publish_sync(event, wait_for_handlers=True) is True
    assert seen == [event.event_id]
    bus.reset()


@pytest.mark.django_db(transaction=True)
async def test_plain_handlers_run_in_a_thread_and_may_use_the_orm():
    names: list[str] = []

    def create_user(event):
        User = get_user_model()
        User.objects.create(username=event.data["to_agent"])
        names.append(User.objects.get(username=event.data["to_agent"]).username)

    event_bus.subscribe(event_type=EventType.AGENT_SWITCHED, handler=create_user)
    await event_bus.publish(switched(7), wait_for_handlers=True)
    assert names == ["agent-7"]
    assert await database_sync_to_async(get_user_model().objects.filter(username="agent-7").exists)()


async def test_drain_and_shutdown_deliver_everything_accepted(bus):
    seen: list[int] = []

    @bus.subscribe()
    async def slow(event):
        await asyncio.sleep(0.001)
        seen.append(1)

    for n in range(50):
        await bus.publish(switched(n))
    assert await bus.shutdown(timeout=10)
    assert len(seen) == 50
    # The bus is usable again after a shutdown.
    await bus.publish(switched(), wait_for_handlers=True)
    await bus.publish(switched())
    await bus.drain()
    assert len(seen) == 52


async def test_the_bus_rebinds_to_a_new_loop(bus):
    """pytest-asyncio gives each test a new loop; a bus used on a finished loop must work on the next."""
    seen: list[str] = []
    bus.subscribe(handler=lambda e: seen.append("sync"))

    def in_another_loop() -> None:
        asyncio.run(bus.publish(switched(), wait_for_handlers=True))

    await asyncio.to_thread(in_another_loop)
    await bus.publish(switched(), wait_for_handlers=True)
    assert seen == ["sync", "sync"]


async def test_bad_arguments_are_refused_clearly(bus):
    with pytest.raises(TypeError, match="callable"):
        bus.subscribe(event_type="x", handler="not a function")
    with pytest.raises(TypeError, match="BaseEvent"):
        await bus.publish({"event_type": "x"})
    with pytest.raises(ValueError, match="overflow"):
        EventBus(overflow="explode")
    with pytest.raises(ValueError, match="max_queue_size"):
        EventBus(max_queue_size=0)
    with pytest.raises(TypeError, match="unsubscribe needs"):
        bus.unsubscribe()


async def test_a_long_burst_does_not_starve_the_loop(bus):
    """The consumer yields now and then, so requests and sockets on the same loop keep being served."""
    handled: list[int] = []
    progress_seen_by_other_task: list[int] = []

    @bus.subscribe()
    async def record(event):
        handled.append(1)

    async def other_task():
        while len(handled) < 3000:
            progress_seen_by_other_task.append(len(handled))
            await asyncio.sleep(0)

    bus.configure(max_queue_size=5000)
    ticker = asyncio.ensure_future(other_task())
    for n in range(3000):
        await bus.publish(BaseEvent("tick", "metrics", data={"n": n}))
    await bus.drain()
    await ticker
    # The other task saw the consumer part-way through the burst, not only before and after it.
    assert any(0 < seen < 3000 for seen in progress_seen_by_other_task)


def test_configure_keeps_what_it_is_not_given():
    bus = EventBus(handler_timeout=5)
    bus.configure(max_queue_size=7)
    assert (bus.handler_timeout, bus.max_queue_size, bus.overflow) == (5, 7, "wait")
    bus.configure(handler_timeout=None)
    assert bus.handler_timeout is None
    with pytest.raises(ValueError, match="handler_timeout"):
        bus.configure(handler_timeout=-1)


# A transport (with REDIS_URL, events.redis_transport.RedisTransport) given to the bus


class RecordingTransport:
    """A transport that records what the bus hands it, and can deliver as if from another process."""

    def __init__(self) -> None:
        self.bus: EventBus | None = None
        self.sent: list[str] = []
        self.calls: list[str] = []

    def attach(self, bus: EventBus) -> None:
        self.bus = bus

    def start(self) -> None:
        self.calls.append("start")

    async def initialize(self, timeout: float = 1.0) -> bool:
        return True

    async def send(self, events) -> None:
        self.sent.extend(event.event_id for event in events)

    def send_sync(self, events, timeout) -> None:
        self.sent.extend(event.event_id for event in events)

    def announce_commit(self, position: int) -> None:
        self.calls.append(f"commit {position}")

    def on_remote_commit(self, callback):
        return callback

    async def close(self, timeout: float | None = 1.0) -> None:
        self.calls.append("close")

    async def shutdown(self, timeout: float | None) -> None:
        self.calls.append("shutdown")

    def reset(self) -> None:
        self.calls.append("reset")

    def reset_stats(self) -> None:
        self.calls.append("reset_stats")

    def stats(self) -> dict:
        return {"sent": len(self.sent)}


async def test_a_bus_with_a_transport_sends_what_it_accepts_and_delivers_what_it_receives():
    transport = RecordingTransport()
    bus = EventBus(transport=transport)
    assert transport.bus is bus
    heard: list[BaseEvent] = []
    bus.subscribe(handler=lambda event: heard.append(event))
    bus.add_middleware(lambda event: None if event.data.get("drop") else event)
    shared, local, replayed, dropped = switched(1), switched(2), switched(3), switched(4)
    replayed.replayed = True
    dropped.data["drop"] = True

    assert await bus.publish(shared, wait_for_handlers=True) is True
    await bus.publish(local, wait_for_handlers=True, distribute=False)
    await bus.publish(replayed, wait_for_handlers=True)
    assert await bus.publish(dropped, wait_for_handlers=True) is False
    many = [switched(5), switched(6)]
    assert await bus.publish_many(many, wait_for_handlers=True) == [True, True]
    assert await asyncio.to_thread(bus.publish_sync, switched(7), True) is True
    theirs = switched(8)
    assert await bus.receive(theirs) is True  # from another process: delivered here, not sent back
    await bus.drain()

    assert transport.sent == [shared.event_id, many[0].event_id, many[1].event_id, heard[5].event_id]
    assert heard[-1] is theirs and theirs.remote is True
    assert len(heard) == 7
    assert bus.get_stats()["distributed"] == {"sent": 4}
    await bus.shutdown(timeout=5)
    assert transport.calls[-1] == "shutdown"
    bus.reset()
    assert transport.calls[-2:] == ["reset_stats", "reset"] and bus.transport is transport


async def test_publish_many_sync_from_a_thread_queues_in_order_and_sends_what_it_accepted():
    transport = RecordingTransport()
    bus = EventBus(transport=transport)
    bus.bind(asyncio.get_running_loop())  # as the server binds its bus: the thread hands over to this loop
    heard: list[str] = []
    bus.subscribe(handler=lambda event: heard.append(event.event_id))
    bus.add_middleware(lambda event: None if event.data.get("drop") else event)
    first, dropped, replayed, last = switched(1), switched(2), switched(3), switched(4)
    dropped.data["drop"] = True
    replayed.replayed = True

    results = await asyncio.to_thread(bus.publish_many_sync, [first, dropped, replayed, last])
    assert results == [True, False, True, True]
    await bus.drain()
    assert heard == [first.event_id, replayed.event_id, last.event_id]
    assert transport.sent == [first.event_id, last.event_id]  # a replayed event is not sent on
    assert first.correlation_id == first.event_id  # stamped as publish_sync stamps
    assert bus.publish_many_sync([switched(5)], distribute=False) == [True]  # on the loop: queued at once
    await bus.drain()
    assert len(heard) == 4 and transport.sent == [first.event_id, last.event_id]
    with pytest.raises(TypeError):
        bus.publish_many_sync(["not an event"])  # type: ignore[list-item]
    bus.reset()


def test_a_bus_without_a_transport_has_no_distributed_figures():
    assert "distributed" not in EventBus().get_stats()
