"""The distributed bus: several buses (processes) on one Redis channel, each event delivered once
everywhere, Redis outages survived, bad messages ignored, and the app's bus wired to it."""

import asyncio
import json
import logging
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

import pytest
import redis.asyncio as aioredis
from django.conf import settings

from events.apps import REMOTE_COMMIT_WAKERS, wake_on_remote_commit
from events.base import BaseEvent
from events.distributed_event_bus import DistributedEventBus, make_distributed
from events.event_bus import EventBus, event_bus
from events.event_store import event_store
from events.redis_transport import RedisTransport

BusFactory = Callable[..., DistributedEventBus]
BusT = TypeVar("BusT", bound=EventBus)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll `predicate` until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


def tick(n: int = 0, **data: object) -> BaseEvent:
    return BaseEvent("tick", "metrics", data={"n": n, **data})


class Heard:
    """A subscriber that records what a bus delivered to it."""

    def __init__(self, bus: EventBus) -> None:
        self.events: list[BaseEvent] = []
        bus.subscribe(handler=self)

    async def __call__(self, event: BaseEvent) -> None:
        self.events.append(event)

    def ids(self) -> list[str]:
        return [event.event_id for event in self.events]

    def has(self, event: BaseEvent) -> bool:
        return event.event_id in self.ids()


@pytest.fixture
def channel() -> str:
    """A channel of this test's own (below the session's), so no other bus hears it."""
    return f"{settings.EVENT_BUS['REDIS_CHANNEL']}:{uuid.uuid4().hex}"


@pytest.fixture
async def buses(channel: str) -> AsyncIterator[BusFactory]:
    """Make DistributedEventBus instances (processes) on the test channel; stopped at the end."""
    made: list[DistributedEventBus] = []

    def make(redis_url: str | None = None, **kwargs: object) -> DistributedEventBus:
        bus = DistributedEventBus(redis_url or settings.REDIS_URL, channel=channel, **kwargs)
        made.append(bus)
        return bus

    yield make
    running = asyncio.get_running_loop()
    for bus in made:
        if bus._loop is running:
            await bus.shutdown(timeout=5)
        else:
            await asyncio.to_thread(bus.reset)  # its own loop: stopped (and closed) in its thread


async def started(bus: BusT) -> BusT:
    assert bus.transport is not None
    assert await bus.transport.initialize(timeout=5), "the bus should subscribe to Redis"
    return bus


async def raw_publish(channel: str, *messages: bytes | str, url: str | None = None) -> None:
    """Publish messages on the channel as another program would."""
    client = aioredis.Redis.from_url(url or settings.REDIS_URL)
    try:
        for message in messages:
            await client.publish(channel, message)
    finally:
        await client.aclose()


def from_elsewhere(*events: BaseEvent, origin: str = "another-process", **extra: object) -> str:
    return json.dumps({"origin": origin, "events": [event.to_dict() for event in events], **extra})


# Between processes


@pytest.mark.redis
async def test_an_event_reaches_the_other_bus_once_and_its_own_subscribers_once(buses):
    a, b = await started(buses()), await started(buses())
    heard_a, heard_b = Heard(a), Heard(b)
    event = tick(1, text="héllo")

    assert await a.publish(event) is True
    await wait_until(lambda: heard_b.has(event), what="b to hear a's event")
    # b answers; once a hears that, a's subscriber has had its own message back (Redis keeps the
    # order on a channel), and must not have delivered it a second time.
    answer = tick(2)
    await b.publish(answer)
    await wait_until(lambda: heard_a.has(answer), what="a to hear b's answer")

    assert heard_a.ids() == [event.event_id, answer.event_id]
    assert heard_b.ids() == [event.event_id, answer.event_id]
    remote = heard_b.events[0]
    assert remote is not event and remote.remote is True and event.remote is False
    assert remote.to_dict() == event.to_dict()  # the contract JSON, unchanged
    assert heard_a.events[1].remote is True and heard_b.events[1].remote is False
    stats_a, stats_b = a.get_stats()["distributed"], b.get_stats()["distributed"]
    assert stats_a["sent"] == 1 and stats_a["received"] == 1
    assert stats_b["sent"] == 1 and stats_b["received"] == 1
    assert stats_a["connected"] and stats_a["enabled"] and stats_a["channel"] == a.channel
    assert stats_a["duplicates"] == stats_b["duplicates"] == 0


@pytest.mark.redis
async def test_a_plain_event_under_a_typed_name_arrives_as_it_was_published(buses):
    # The design document lets anyone publish a BaseEvent of any type; its typed class would refuse
    # these data (message_added needs a role), so the other process must not.
    a, b = await started(buses()), await started(buses())
    heard_b = Heard(b)
    event = BaseEvent(event_type="message_added", session_id="s", data={"text": "no role here"})
    assert await a.publish(event) is True
    await wait_until(lambda: heard_b.has(event), what="b to hear the plain event")
    assert heard_b.events[0].to_dict() == event.to_dict()
    assert b.get_stats()["distributed"]["invalid_messages"] == 0


@pytest.mark.redis
async def test_the_same_event_relayed_twice_is_delivered_once(buses, channel):
    b = await started(buses())
    heard = Heard(b)
    event, marker = tick(1), tick(2)

    await raw_publish(
        channel,
        from_elsewhere(event, origin="process-1"),
        from_elsewhere(event, origin="process-2"),  # the same event posted to another process
        from_elsewhere(event, marker, origin="process-1"),
    )
    await wait_until(lambda: heard.has(marker), what="the marker")

    assert heard.ids() == [event.event_id, marker.event_id]
    assert b.get_stats()["distributed"]["duplicates"] == 2


@pytest.mark.redis
async def test_an_event_this_process_published_is_not_delivered_again_when_another_relays_it(buses, channel):
    a = await started(buses())
    heard = Heard(a)
    event, marker = tick(1), tick(2)
    await a.publish(event)

    await raw_publish(channel, from_elsewhere(event), from_elsewhere(marker))
    await wait_until(lambda: heard.has(marker), what="the marker")

    assert heard.ids() == [event.event_id, marker.event_id]
    assert a.get_stats()["distributed"]["duplicates"] == 1


@pytest.mark.redis
async def test_publish_sync_from_a_thread_and_publish_many_are_distributed_in_order(buses):
    a, b = await started(buses()), await started(buses())
    heard = Heard(b)
    first = tick(1)
    many = [tick(n) for n in range(2, 7)]

    assert await asyncio.to_thread(a.publish_sync, first) is True
    assert await a.publish_many(many) == [True] * 5
    await wait_until(lambda: len(heard.events) == 6, what="six events")

    assert heard.ids() == [event.event_id for event in [first, *many]]
    assert all(event.remote for event in heard.events)


@pytest.mark.redis
async def test_a_script_without_an_event_loop_distributes_what_it_publishes(buses):
    """Management commands publish with publish_sync on the bus's own loop: the relay starts there."""
    b = await started(buses())
    heard = Heard(b)
    script_bus = buses()
    event = tick(1)

    assert await asyncio.to_thread(script_bus.publish_sync, event) is True
    await wait_until(lambda: heard.has(event), what="the script's event")

    assert script_bus._thread is not None  # it started a loop of its own
    assert heard.events[0].remote is True


@pytest.mark.redis
async def test_publish_with_distribute_false_stays_local(buses):
    a, b = await started(buses()), await started(buses())
    heard_a, heard_b = Heard(a), Heard(b)
    local, shared = tick(1), tick(2)

    await a.publish(local, distribute=False)
    await a.publish(shared)
    await wait_until(lambda: heard_b.has(shared), what="the shared event")

    assert heard_b.ids() == [shared.event_id]
    assert heard_a.ids() == [local.event_id, shared.event_id]
    assert a.get_stats()["distributed"]["sent"] == 1


@pytest.mark.redis
async def test_remote_and_replayed_events_are_not_sent_on(buses, channel):
    a, b = await started(buses()), await started(buses())
    heard_b = Heard(b)
    replayed = tick(1)
    replayed.replayed = True
    await a.publish(replayed)
    await raw_publish(channel, from_elsewhere(tick(2)))  # a hears it as remote: not sent on to b
    marker = tick(3)
    await a.publish(marker)
    await wait_until(lambda: heard_b.has(marker), what="the marker")

    assert len(heard_b.events) == 2  # the other process's event and the marker, once each
    assert a.get_stats()["distributed"]["sent"] == 1


@pytest.mark.redis
async def test_commit_notices_reach_the_other_buses_callbacks(buses):
    a, b = await started(buses()), await started(buses())
    on_a: list[int] = []
    on_b: list[int] = []
    a.on_remote_commit(on_a.append)
    b.on_remote_commit(on_b.append)

    a.announce_commit(5)
    a.announce_commit(7)  # coalesced with 5 when not sent yet
    await wait_until(lambda: bool(on_b) and on_b[-1] == 7, what="b to hear of position 7")
    await asyncio.to_thread(b.announce_commit, 9)  # from another thread (the store's writer)
    await wait_until(lambda: on_a == [9], what="a to hear of position 9")

    assert on_b in ([5, 7], [7])
    assert a.get_stats()["distributed"]["commits_received"] == 1


@pytest.mark.redis
async def test_bad_messages_on_the_channel_are_counted_and_ignored(buses, channel, caplog):
    b = await started(buses())
    heard = Heard(b)
    good = tick(1)

    await raw_publish(
        channel,
        b"not json at all",
        b"\xff\xfe",
        "[1, 2, 3]",
        json.dumps({"events": [good.to_dict()]}),  # no origin
        json.dumps({"origin": "x", "events": "not a list"}),
        json.dumps({"origin": "x"}),  # nothing in it
        json.dumps({"origin": "x", "committed": "seven"}),
        json.dumps(
            {"origin": "x", "events": [{"event_type": 5}, "an event?", {**good.to_dict(), "extra": 1}]}
        ),
        from_elsewhere(good, origin="x"),
    )
    await wait_until(lambda: heard.has(good), what="the good event after the bad ones")

    assert heard.ids() == [good.event_id]
    assert b.get_stats()["distributed"]["invalid_messages"] == 10
    assert any("ignored a message" in record.getMessage() for record in caplog.records)


# Redis going away and coming back


class PrivateRedis:
    """A redis-server of a test's own, which the test may kill and start again on the same port."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no"]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.processes.append(process)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as probe:
                    probe.sendall(b"PING\r\n")
                    if probe.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the private redis-server did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        process = self.processes[-1]
        process.kill()
        process.wait(timeout=10)

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(binary)
    server.start()
    yield server
    server.stop_all()


async def test_redis_going_away_never_breaks_local_delivery_and_delivery_resumes(
    buses, private_redis, caplog
):
    url = private_redis.url
    a, b = await started(buses(url)), await started(buses(url))
    heard_a, heard_b = Heard(a), Heard(b)
    before = tick(0)
    await a.publish(before)
    await wait_until(lambda: heard_b.has(before), what="delivery before the outage")

    caplog.set_level(logging.INFO, logger="events")
    private_redis.kill()
    a.redis_transport.outbox_size = 5
    during = [tick(n) for n in range(1, 10)]
    for event in during:
        assert await a.publish(event) is True  # never raises
    assert await a.publish(tick(99), wait_for_handlers=True) is True
    await wait_until(lambda: len(heard_a.events) == 11, what="local delivery during the outage")
    await wait_until(
        lambda: a.get_stats()["distributed"]["publish_failures"] >= 3, what="several failed sends"
    )
    await wait_until(lambda: a.get_stats()["distributed"]["outbox"] == 5, what="the outbox at rest")
    stats = a.get_stats()["distributed"]
    assert stats["dropped"] == 10 - 5  # the newest five are kept for when Redis is back
    assert stats["connected"] is False
    await wait_until(lambda: not b.get_stats()["distributed"]["connected"], what="b to notice")
    # One warning per outage, not one per failed attempt.
    failures_logged = [r for r in caplog.records if "cannot publish to Redis" in r.getMessage()]
    assert len(failures_logged) == 1

    private_redis.start()
    resumed_at = time.monotonic()
    probes: list[BaseEvent] = []

    def b_heard_a_probe() -> bool:
        return any(heard_b.has(probe) for probe in probes)

    while not b_heard_a_probe():
        assert time.monotonic() - resumed_at < 10, "delivery did not resume within 10 s"
        probes.append(tick(1000 + len(probes)))
        await a.publish(probes[-1])
        await asyncio.sleep(0.1)
    assert a.get_stats()["distributed"]["reconnects"] >= 1
    assert b.get_stats()["distributed"]["reconnects"] >= 1
    await wait_until(lambda: a.get_stats()["distributed"]["connected"], what="a connected again")
    # The events kept while Redis was away were sent once it came back.
    assert a.get_stats()["distributed"]["sent"] >= 1 + 5 + 1


async def test_an_unreachable_redis_costs_a_publisher_nothing_but_a_counter(buses):
    """No Redis listening at all: publishing works locally, the failures are counted."""
    bus = buses(f"redis://127.0.0.1:{_free_port()}/0")
    heard = Heard(bus)

    assert await bus.initialize(timeout=0.3) is False  # does not raise either
    for n in range(3):
        assert await bus.publish(tick(n)) is True
    await wait_until(lambda: len(heard.events) == 3, what="local delivery")
    await wait_until(lambda: bus.get_stats()["distributed"]["publish_failures"] >= 1, what="a failure")
    assert bus.get_stats()["distributed"]["connected"] is False
    closed_at = time.monotonic()
    await bus.close()  # Redis is away: close does not wait to flush
    assert time.monotonic() - closed_at < 1.5


# Loops, reset and the app's wiring


def test_reset_forgets_the_relay_of_a_closed_loop_and_the_next_loop_starts_again():
    """Each test has a loop of its own: after reset, the next publish relays on the new loop."""
    bus = DistributedEventBus(f"redis://127.0.0.1:{_free_port()}/0", channel="eventbus:test:unused")
    relays = []

    async def publish_once() -> None:
        await bus.publish(tick())
        relays.append(bus.redis_transport._relay)
        await asyncio.sleep(0.05)

    asyncio.run(publish_once())
    bus.reset()
    assert bus.redis_transport._relay is None and bus.get_stats()["distributed"]["outbox"] == 0
    asyncio.run(publish_once())
    bus.reset()

    assert relays[0] is not None and relays[1] is not None and relays[0] is not relays[1]
    assert relays[0].loop.is_closed() and relays[1].loop.is_closed()
    assert all(task.done() for relay in relays for task in relay.tasks)


def test_without_a_redis_url_a_distributed_bus_is_a_local_bus():
    async def run() -> list[BaseEvent]:
        bus = DistributedEventBus()
        heard = Heard(bus)
        await bus.publish(tick(), wait_for_handlers=True)
        assert await bus.initialize() is False
        assert bus.redis_transport._relay is None
        assert bus.get_stats()["distributed"]["enabled"] is False
        return heard.events

    assert len(asyncio.run(run())) == 1


def test_make_distributed_gives_the_shared_bus_object_a_redis_transport():
    bus = EventBus(max_queue_size=7)
    heard = Heard(bus)

    transport = make_distributed(bus, "redis://127.0.0.1:1/0", channel="eventbus:test:x")
    assert bus.transport is transport and type(bus) is EventBus
    assert transport.channel == "eventbus:test:x" and bus.max_queue_size == 7
    assert bus.subscriptions[0].handler is heard  # everything it had stays
    assert bus.get_stats()["distributed"]["channel"] == "eventbus:test:x"
    # Again: the same transport, re-pointed (what was wired to it stays wired).
    assert make_distributed(bus, "redis://127.0.0.1:2/0", channel="eventbus:test:y") is transport
    assert transport.redis_url == "redis://127.0.0.1:2/0" and transport.channel == "eventbus:test:y"


@pytest.mark.redis
def test_with_redis_url_the_apps_bus_is_distributed_and_wired_to_the_store():
    transport = event_bus.transport
    assert isinstance(transport, RedisTransport)
    assert transport.redis_url == settings.REDIS_URL
    assert transport.channel == settings.EVENT_BUS["REDIS_CHANNEL"]
    assert transport.announce_commit in event_store._commit_listeners
    assert wake_on_remote_commit in transport._commit_callbacks
    assert event_store.wake_readers in REMOTE_COMMIT_WAKERS


@pytest.mark.redis
async def test_the_apps_bus_hears_another_process_and_wakes_its_readers(monkeypatch):
    assert isinstance(event_bus.transport, RedisTransport)
    other = DistributedEventBus(settings.REDIS_URL, channel=event_bus.transport.channel)
    woken: list[str] = []
    monkeypatch.setattr("events.apps.REMOTE_COMMIT_WAKERS", [lambda: woken.append("reader")])
    try:
        heard_app, heard_other = Heard(event_bus), Heard(other)
        await started(event_bus)
        await started(other)
        mine, theirs = tick(1), tick(2)

        await event_bus.publish(mine)
        await other.publish(theirs)
        other.announce_commit(42)
        await wait_until(lambda: heard_other.has(mine), what="the other process to hear the app")
        await wait_until(lambda: heard_app.has(theirs) and woken == ["reader"], what="the app to hear it")

        assert [event.remote for event in heard_app.events] == [False, True]
    finally:
        await other.shutdown(timeout=5)
