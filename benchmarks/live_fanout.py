"""Live fan-out: 50 WebSocket clients fed 200 events/s through the app's `/ws/events/` and through a bare
Channels consumer on the same channel layer, for the core and the pub/sub Redis layer, and what each
layer does with a client that stops reading.

Set-up, thrown away at the end: a new PostgreSQL database `bench_live_<pid>` migrated with `manage.py
migrate`, an auditor's and an agent's token (`manage.py create_api_token NAME --group auditors|agents`),
and Redis at --redis-url (a database number of its own, default 7; the bus channel
EVENT_BUS_REDIS_CHANNEL, the Pub/Sub channels and the groups of the run carry the pid or a random id:
Pub/Sub channels ignore the database number). For each layer one Daphne (`python -m daphne ...
benchmarks._live_bench_asgi:application`: the project's application plus `/ws/bare/`, a bare Channels
consumer, see that module) with DJANGO_SETTINGS_MODULE=eventbus_project.settings, DATABASE_URL,
REDIS_URL, EVENT_BUS_REDIS_CHANNEL and REDIS_CHANNEL_LAYER=core|pubsub, one after the other; every
publisher child gets the same environment.

Each measurement: C clients (default 50; the `websockets` library, all in this process, each reading
continuously) connect; then a publisher in a child process (its schedule shares neither a loop nor a
core with the clients) sends events on a fixed schedule, event i at start + i/200 s, for S seconds:
  - bare: `channel_layer.group_send(group, {"type": "bench.event", "text": ...})` on the layer of the
    settings, read by clients of `/ws/bare/?group=...`; the text is padded to about the size of the
    app's frame.
  - app (the main comparison): the child is what an agent runtime of the same deployment is, a Django
    process: `django.setup()`, its bus bound to its loop and distributed (`events.apps.
    start_distributed_bus()`, as `manage.py simulate_agents` does), `await event_bus.publish(event)` per
    event; at the end `event_bus.shutdown()` (the bus drained, the store flushed, the last commit notice
    sent). Clients of `/ws/events/?token=...&session_id=<the run's>`, each past `caught_up` before the
    publisher starts. An event's way: the publisher's bus -> its store, which commits in batches (a
    batch waits up to 50 ms, events.event_store.FLUSH_INTERVAL_S, for more events) to the shared
    database -> the commit notice over Redis (the distributed bus; the events themselves go too, and
    the server's bus hands them to its own subscribers, but the feed sends what it reads from the
    store) -> the server's live feed, woken by the notice (events.apps.REMOTE_COMMIT_WAKERS), reads the
    rows -> each connection's queue -> its socket.
  - app, waited (--wait-seconds, 5 s): the same with `publish(event, wait_for_handlers=True)` fired as
    concurrent tasks: the store commits each event at once instead of within 50 ms.
  - app, POSTed (--other-seconds, 5 s): one agent's `POST /api/events/` of --batch (10) events each
    (httpx, keep-alive connections, as many in flight as the schedule needs). Not run: one event a
    POST (--batch 1 runs it, for 5 s). Daphne spends 9-10 ms of CPU on each POST, so one process
    ingests about 100-120 POSTs/s: at 200 POSTs/s of one event the backlog grew for the whole run
    (measured over 20 s: 1,186 of 4,000 POSTs answered in time, 2,413 deliveries/s, p99 21 s, ratio
    0.39). Ingestion, not the fan-out, was the limit; the bus and the batched POSTs show the fan-out.
Every event carries its send time `t` (time.time() just before its publish, POST or group_send); a
client takes time.time() when a frame arrives: publish-to-client latency = arrival - t (one machine, one
clock). A server that cannot keep up must not stretch the run: calls still unanswered 5 s after the
schedule are abandoned, and the clients then wait until every expected frame arrived, or 2 s without
one, or 5 s. Figures: deliveries (distinct events per client, summed) against the expected (events
scheduled x clients; missing = the difference: late beyond that window, or lost), deliveries/s =
deliveries / (last arrival - first send), latency p50/p99/max over every delivery, the CPU Daphne and
this process (the clients) used from the schedule's start; for the app, the time from the commit (the
publisher's store committed the event's batch, or the POST's 201) to the client, which separates
ingestion from fan-out; for the bus, the publisher's store batches and publish-to-commit latency, and
the commit notices the server heard (its `GET /api/stats/`, `distributed`).

The main comparison, whose ratio is printed last, runs on the core layer (the settings' default) for
--seconds (20, as the issue fixes): bare, then app via the bus. Beside it the two app variants above,
and the other layer's bare path for --other-seconds (5). The app's path is not run on the other layer
(unless --app-on-every-layer): its consumer does not use the channel layer at all (events.consumers:
events come from the live feed), and the whole script must stay under two minutes.

Slow client, per layer: beside one reading client, one client that stops reading (a 4 KB receive
buffer, websockets' queue of one frame, no recv()) on a group of their own while the publisher sends
--slow-rate (400/s) messages of 16 KB for --slow-seconds (6) s; then it reads again. The bare consumer
stops taking messages off the layer while its socket buffer is full (see _live_bench_asgi), so what
piles up meanwhile is the layer's to keep or drop: channels_redis core keeps at most `capacity` (1,000)
per channel in the process and drops the oldest beyond, silently (the sender hears nothing); pub/sub
keeps every message in an unbounded in-process queue. Figures: what each client got in the end (lost =
sent - received) and Daphne's RSS idle, at its peak (sampled every 100 ms), while the slow client is
stalled, and after it caught up.

Goals (the live issue): the app's deliveries/s at least 0.8 of the bare consumer's, and its p99 under
100 ms. Measured on this kind of machine (2 cores, shared with other work; load average 1.3-2.6), three
runs of 85-87 s each:
  - app via the bus, core, 20 s: 9,986-9,988 deliveries/s, all 200,000 delivered, p50 44-46 ms, p99
    70-77 ms; Daphne 21% CPU. Of that, publish-to-commit p50 29 ms, p99 55 ms (the store's 50 ms batch
    window: about 11 events a batch, 364 batches and commit notices for 4,000 events), commit-to-client
    p50 15-16 ms, p99 21-29 ms (the notice over Redis, the read, and the batch's 550 frames written).
    The feed is woken by the notices (the server heard every one), not by its 0.5 s poll.
  - bare, core, 20 s: 5,466-6,214 deliveries/s, 44,000-62,000 of 200,000 missing, p50 4.9-6.2 s, p99
    8-9.6 s: Daphne at 80-100% CPU cannot keep up (one layer message per client per event).
    Ratio app/bare 1.61-1.83.
  - app via the bus, each publish waited, 5 s: 9,985-9,994/s, p50 7-9 ms, p99 13-30 ms (one commit
    and one notice per event; Daphne 53-57% CPU).
  - app, 10 events a POST, 5 s: 9,842-10,044/s, p50 28-29 ms, p99 32-517 ms (one run had a 0.5 s
    stall under a load of 2.6; the others 32-35 ms).
  - bare, pub/sub, 5 s: 7,473-8,651/s, all delivered, p50 0.2-0.9 s, p99 0.8-1.7 s (Daphne 81-105%).
  - slow client: core lost 1,255 of 2,400 (RSS +16 MB, back to +4 MB after), pub/sub lost none and
    held it all (RSS +35 MB, not or partly given back).
The last line printed is the ratio app/bare of deliveries/s on the main layer.

Run from the repository root (PostgreSQL and Redis on 127.0.0.1):
`.venv/bin/python benchmarks/live_fanout.py [--clients C] [--rate R] [--seconds S] [--profile FILE]`.
With `--profile FILE`, py-spy (the bench extra) records Daphne during the main app path (`py-spy record
--pid`: a flame graph, or speedscope for .json, collapsed stacks for .txt; its figures are then not the
goal's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

from _common import (
    DEFAULT_POSTGRES_SERVER,
    RESULT_PREFIX,
    ROOT,
    Log,
    api_token,
    cpu_seconds,
    daphne,
    manage,
    percentile,
    positive_int,
    postgres_database,
    proc_status,
    py_spy_path,
    start_profiler,
    stop_profiler,
    tail,
)

sys.path.insert(0, str(ROOT))

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/7"
ASGI_APP = "benchmarks._live_bench_asgi:application"
START_LINE = "BENCH-START"
LAYERS = ("core", "pubsub")
AUDITOR, AGENT = "bench-live-auditor", "bench-live-agent"
GOAL_RATIO = 0.8
GOAL_P99_MS = 100.0
PUBLISH_GRACE_S = 5.0  # after the schedule: calls (POSTs) not answered by then are abandoned
QUIET_S = 2.0  # then: stop waiting for frames after this long without one ...
MAX_GRACE_S = 5.0  # ... or after this long in all
BARE_PAD = 330  # characters of padding: a bare frame about the size of the app's
SLOW_PAD = 16_000
SLOW_RCVBUF = 4096
MB = 1024 * 1024
GROUPS_USED: list[str] = []  # removed from Redis at the end: a consumer cut off never leaves its group


def log(message: str) -> None:
    print(f"[live] {message}", file=sys.stderr, flush=True)


# The publisher: a child process, so its schedule does not share a loop (or a core) with the clients.


async def sleep_until(deadline: float) -> None:
    delay = deadline - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


async def paced(count: int, rate: float, send: Any) -> dict[str, Any]:
    """Call `send(i, t)` for i in range(count) at start + i/rate, each in a task; their results and lags."""
    tasks = []
    lags = []
    print(START_LINE, flush=True)  # the parent starts its CPU counters here
    start = time.perf_counter() + 0.05
    for index in range(count):
        target = start + index / rate
        await sleep_until(target)
        lags.append(time.perf_counter() - target)
        tasks.append(asyncio.create_task(send(index, time.time())))
    # A server that cannot keep up must not stretch the run: what is unanswered by then is abandoned.
    _, unanswered = await asyncio.wait(tasks, timeout=PUBLISH_GRACE_S)
    for task in unanswered:
        task.cancel()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [
        repr(outcome)
        for outcome in outcomes
        if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError)
    ]
    durations = sorted(outcome for outcome in outcomes if isinstance(outcome, float))
    lags.sort()
    return {
        "sent": count,
        "ok": len(durations),
        "unanswered": len(unanswered),
        "errors": errors[:5],
        "error_count": len(errors),
        "seconds": time.perf_counter() - start,
        "lag_p99_ms": percentile(lags, 99) * 1000,
        "lag_max_ms": lags[-1] * 1000 if lags else 0.0,
        "call_p50_ms": percentile(durations, 50) * 1000,
        "call_p99_ms": percentile(durations, 99) * 1000,
    }


def event_payload(params: dict[str, Any], index: int, sent_at: float) -> dict[str, Any]:
    """The contract JSON of the run's event `index`, sent at `sent_at` (time.time())."""
    return {
        "event_type": "message_added",
        "session_id": params["session_id"],
        "correlation_id": f"{params['run']}-{index}",
        "source": "bench-live",
        "data": {
            "role": "assistant",
            "content_length": 42,
            "agent_name": "coder",
            "run": params["run"],
            "seq": index,
            "t": sent_at,
        },
    }


async def publish_app(params: dict[str, Any]) -> dict[str, Any]:
    """An agent posting to the server: `POST /api/events/`, `batch` events a request."""
    import httpx

    url = f"http://127.0.0.1:{params['port']}/api/events/"
    headers = {"Authorization": f"Bearer {params['token']}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    batch = params.get("batch", 1)  # events per POST: a JSON list when more than one
    answered: list[float | None] = [None] * params["count"]
    async with httpx.AsyncClient(limits=limits, timeout=30, headers=headers) as client:
        # Untimed: one connection opened and the first request's work (imports, caches) done.
        warm = await client.post(url, content=json.dumps(event_payload(params, -1, time.time())))
        if warm.status_code != 201:
            raise RuntimeError(f"POST /api/events/ answered {warm.status_code}: {warm.text[:500]}")

        async def send(index: int, sent_at: float) -> float:
            started = time.perf_counter()
            seqs = range(index * batch, min((index + 1) * batch, params["count"]))
            events = [event_payload(params, seq, sent_at) for seq in seqs]
            response = await client.post(url, content=json.dumps(events if batch > 1 else events[0]))
            if response.status_code != 201:
                raise RuntimeError(f"POST answered {response.status_code}: {response.text[:200]}")
            now = time.time()
            for seq in seqs:
                answered[seq] = now
            return time.perf_counter() - started

        posts = -(-params["count"] // batch)
        result = await paced(posts, params["rate"] / batch, send)
    result["answered"] = answered
    return result


async def publish_bus(params: dict[str, Any]) -> dict[str, Any]:
    """An agent runtime of the deployment: a Django process publishing on its own (distributed) bus.

    Its store commits the events to the shared database in batches; each commit's notice goes over Redis
    to the server, whose live feed then reads them. `answered` holds when each event was committed here.
    """
    import django

    django.setup()
    from events.apps import start_distributed_bus
    from events.base import BaseEvent
    from events.event_bus import event_bus
    from events.event_store import event_store
    from events.redis_transport import RedisTransport

    if not isinstance(event_bus.transport, RedisTransport) or event_bus.transport.redis_url is None:
        raise RuntimeError("the publisher's bus is not distributed: is REDIS_URL set?")
    event_bus.bind(asyncio.get_running_loop())
    await start_distributed_bus()
    if not event_bus.get_stats()["distributed"]["connected"]:
        raise RuntimeError(f"the publisher's bus is not connected to Redis: {event_bus.get_stats()}")
    wait = bool(params.get("wait"))
    count = params["count"]
    events: list[Any] = [None] * count
    committed: list[float | None] = [None] * count
    first_open = 0  # events before it are all committed
    created = 0

    def on_commit(position: int) -> None:
        """After each batch the store committed (positions are set by then): note when, per event."""
        nonlocal first_open
        now = time.time()
        for index in range(first_open, created):
            event = events[index]
            if committed[index] is None and event is not None and event.position is not None:
                committed[index] = now
        while first_open < created and committed[first_open] is not None:
            first_open += 1

    # Untimed: the store's connection opened, a batch committed and its notice sent.
    warm = BaseEvent.from_dict(event_payload(params, -1, time.time()))
    await event_bus.publish(warm, wait_for_handlers=True)
    event_store.add_commit_listener(on_commit)
    before = event_store.get_stats()

    async def send(index: int, _scheduled: float) -> float:
        nonlocal created
        started = time.perf_counter()
        event = BaseEvent.from_dict(event_payload(params, index, time.time()))
        events[index] = event
        created = max(created, index + 1)
        await event_bus.publish(event, wait_for_handlers=wait)
        return time.perf_counter() - started

    result = await paced(count, params["rate"], send)
    # Everything accepted is handled, committed, and its commit notice sent, before the process ends.
    drained = await event_bus.shutdown(timeout=30)
    after = event_store.get_stats()
    distributed = event_bus.get_stats()["distributed"]
    to_commit = sorted(
        done - event.data["t"]
        for event, done in zip(events, committed, strict=True)
        if event is not None and done is not None
    )
    result.update(
        answered=committed,
        drained=drained,
        committed=sum(1 for done in committed if done is not None),
        commit_p50_ms=percentile(to_commit, 50) * 1000,
        commit_p99_ms=percentile(to_commit, 99) * 1000,
        batches=after["batches"] - before["batches"],
        last_batch_ms=after["last_batch_ms"],
        redis_events_sent=distributed["sent"],
        commit_notices_sent=distributed["commits_sent"],
        redis_failures=distributed["publish_failures"] + distributed["dropped"],
    )
    return result


async def publish_bare(params: dict[str, Any]) -> dict[str, Any]:
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    assert layer is not None
    pad = "x" * params["pad"]
    group = params["group"]

    async def send(index: int, sent_at: float) -> float:
        started = time.perf_counter()
        text = json.dumps({"run": params["run"], "seq": index, "t": sent_at, "pad": pad})
        await layer.group_send(group, {"type": "bench.event", "text": text})
        return time.perf_counter() - started

    result = await paced(params["count"], params["rate"], send)
    result["layer"] = f"{type(layer).__module__}.{type(layer).__name__}"
    # Not flush(): on the core layer it deletes every key of the layer, the server's queued messages too.
    close = getattr(layer, "close_pools", None)
    if close is not None:
        await close()
    return result


def publisher_child(params: dict[str, Any]) -> dict[str, Any]:
    publish = {"post": publish_app, "bus": publish_bus, "bare": publish_bare}[params["kind"]]
    return asyncio.run(publish(params))


async def run_publisher(env: dict[str, str], params: dict[str, Any], on_start: Any = None) -> dict[str, Any]:
    """Run the publisher child; `on_start()` is called when its schedule starts."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--publisher-child",
        json.dumps(params),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        limit=64 * MB,  # the result is one line
    )
    assert process.stdout is not None
    result: dict[str, Any] | None = None
    async for raw in process.stdout:
        line = raw.decode()
        if line.startswith(START_LINE):
            if on_start is not None:
                on_start()
        elif line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX) :])
        else:
            sys.stdout.write(line)
    await process.wait()
    if result is None:
        raise RuntimeError(f"the publisher failed (exit code {process.returncode}); see above")
    return result


# The clients.


@dataclass
class Client:
    """One WebSocket client's deliveries of the run's events."""

    kind: str
    run: str
    count: int
    seen: bytearray = field(init=False)
    latencies: list[float] = field(default_factory=list)
    delivered: int = 0
    duplicates: int = 0
    other: dict[str, int] = field(default_factory=dict)
    arrivals: list[tuple[int, float]] = field(default_factory=list)
    first_sent: float = float("inf")
    last_arrival: float = 0.0
    frame_bytes: int = 0

    def __post_init__(self) -> None:
        self.seen = bytearray(self.count)

    def take(self, raw: str | bytes) -> None:
        arrived = time.time()
        message = json.loads(raw)
        if self.kind == "app":
            if message.get("type") != "event":
                kind = str(message.get("type"))
                self.other[kind] = self.other.get(kind, 0) + 1
                return
            data = message["event"]["data"]
        else:
            data = message
        seq = data.get("seq")
        if data.get("run") != self.run or not isinstance(seq, int) or not 0 <= seq < self.count:
            return  # the warm-up event, or another run's
        if self.seen[seq]:
            self.duplicates += 1
            return
        self.seen[seq] = 1
        self.delivered += 1
        self.frame_bytes += len(raw)
        self.latencies.append(arrived - data["t"])
        if self.kind == "app":
            self.arrivals.append((seq, arrived))
        self.first_sent = min(self.first_sent, data["t"])
        self.last_arrival = arrived


async def connect(url: str, **options: Any) -> Any:
    from websockets.asyncio.client import connect as ws_connect

    return await ws_connect(url, compression=None, ping_interval=None, max_size=None, **options)


async def read_all(ws: Any, client: Client) -> None:
    from websockets.exceptions import ConnectionClosed

    try:
        async for raw in ws:
            client.take(raw)
    except ConnectionClosed:
        pass


async def wait_caught_up(ws: Any) -> None:
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if message.get("type") == "caught_up":
            return
        if message.get("type") == "error":
            raise RuntimeError(f"/ws/events/ refused the client: {message}")


def rss_mb(pid: int) -> float:
    return proc_status(pid, "VmRSS") / 1024


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def wait_quiet(clients: list[Client], expected: int) -> None:
    """Until every expected delivery arrived, or none for QUIET_S (at most MAX_GRACE_S)."""
    deadline = time.monotonic() + MAX_GRACE_S
    last_total, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        total = sum(client.delivered for client in clients)
        if total >= expected:
            return
        if total != last_total:
            last_total, last_change = total, time.monotonic()
        elif time.monotonic() - last_change > QUIET_S:
            return
        await asyncio.sleep(0.05)


async def server_bus_stats(server: Server) -> dict[str, Any]:
    """The server's distributed bus counters (`GET /api/stats/`, `distributed`)."""
    import httpx

    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(
            f"http://127.0.0.1:{server.port}/api/stats/",
            headers={"Authorization": f"Bearer {server.auditor_token}"},
        )
    response.raise_for_status()
    distributed: dict[str, Any] = response.json().get("distributed") or {}
    return distributed


async def measure_path(
    kind: str,
    server: Server,
    clients_n: int,
    rate: int,
    seconds: float,
    profile: str | None = None,
    via: str = "bus",
    batch: int = 1,
    wait: bool = False,
) -> dict[str, Any]:
    """C clients on one path, the publisher at `rate` for `seconds`: the deliveries and latencies.

    kind "bare": group_send to /ws/bare/; kind "app": /ws/events/, the events published `via` "bus" (an
    agent runtime's process, `wait`: with wait_for_handlers) or "post" (`batch` events a POST).
    """
    run = uuid.uuid4().hex[:12]
    count = int(rate * seconds)
    params: dict[str, Any] = {"kind": "bare", "run": run, "count": count, "rate": rate, "port": server.port}
    if kind == "app":
        session_id = f"bench-live-{run}"
        url = f"ws://127.0.0.1:{server.port}/ws/events/?token={server.auditor_token}&session_id={session_id}"
        params.update(kind=via, token=server.agent_token, session_id=session_id, batch=batch, wait=wait)
    else:
        group = f"bench-live-{run}"
        GROUPS_USED.append(group)
        url = f"ws://127.0.0.1:{server.port}/ws/bare/?group={group}"
        params.update(group=group, pad=BARE_PAD)
    sockets = []
    for first in range(0, clients_n, 25):  # Twisted listens with a backlog of 50
        sockets += await asyncio.gather(*(connect(url) for _ in range(first, min(first + 25, clients_n))))
    if kind == "app":
        await asyncio.gather(*(wait_caught_up(ws) for ws in sockets))
    clients = [Client(kind, run, count) for _ in sockets]
    readers = [asyncio.create_task(read_all(ws, client)) for ws, client in zip(sockets, clients, strict=True)]
    heard = await server_bus_stats(server) if params["kind"] == "bus" else {}
    spy = start_daphne_profiler(server.pid, profile) if profile else None
    marks = {"daphne": cpu_seconds(server.pid), "own": own_cpu_seconds(), "at": time.monotonic()}

    def schedule_started() -> None:  # CPU from here: not the child's start-up (Django's set-up)
        marks.update(daphne=cpu_seconds(server.pid), own=own_cpu_seconds(), at=time.monotonic())

    published = await run_publisher(server.env, params, schedule_started)
    expected = count * clients_n
    await wait_quiet(clients, expected)
    elapsed = time.monotonic() - marks["at"]
    daphne_cpu, own_cpu = cpu_seconds(server.pid) - marks["daphne"], own_cpu_seconds() - marks["own"]
    if spy is not None:
        stop_profiler(spy, log, 300)
    if heard:
        now = await server_bus_stats(server)
        heard = {key: now.get(key, 0) - heard.get(key, 0) for key in ("received", "commits_received")}
    for ws in sockets:
        await ws.close()
    await asyncio.gather(*readers, return_exceptions=True)

    latencies = sorted(latency for client in clients for latency in client.latencies)
    # The app path's share after ingestion: from the commit (the POST's 201, or the publisher's store
    # committing the batch) to the client.
    answered = published.pop("answered", None) or []
    after_answer = sorted(
        arrival - answered[seq]
        for client in clients
        for seq, arrival in client.arrivals
        if seq < len(answered) and answered[seq] is not None
    )
    delivered = sum(client.delivered for client in clients)
    first_sent = min(client.first_sent for client in clients)
    last_arrival = max(client.last_arrival for client in clients)
    other: dict[str, int] = {}
    for client in clients:
        for key, value in client.other.items():
            other[key] = other.get(key, 0) + value
    return {
        "kind": kind,
        "via": params["kind"],
        "batch": batch,
        "wait": wait,
        "server_heard": heard,
        "clients": clients_n,
        "seconds": seconds,
        "published": published,
        "expected": expected,
        "delivered": delivered,
        "duplicates": sum(client.duplicates for client in clients),
        "other_frames": other,
        "rate": delivered / (last_arrival - first_sent) if delivered else 0.0,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": latencies[-1] * 1000 if latencies else float("nan"),
        "after_answer_p50_ms": percentile(after_answer, 50) * 1000,
        "after_answer_p99_ms": percentile(after_answer, 99) * 1000,
        "frame_bytes": sum(client.frame_bytes for client in clients) / delivered if delivered else 0,
        "daphne_cpu": daphne_cpu / elapsed,
        "clients_cpu": own_cpu / elapsed,
    }


async def slow_client_check(server: Server, rate: int, seconds: float) -> dict[str, Any]:
    """A client that stops reading beside one that reads, on the bare consumer: loss and Daphne's RSS."""
    run = uuid.uuid4().hex[:12]
    count = int(rate * seconds)
    group = f"bench-live-slow-{run}"
    GROUPS_USED.append(group)
    url = f"ws://127.0.0.1:{server.port}/ws/bare/?group={group}"
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
    sock.connect(("127.0.0.1", server.port))
    sock.setblocking(False)
    slow_ws = await connect(url, sock=sock, max_queue=1)
    reading_ws = await connect(url)
    slow, reading = Client("bare", run, count), Client("bare", run, count)
    reader = asyncio.create_task(read_all(reading_ws, reading))
    idle = rss_mb(server.pid)
    peak = idle
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_mb(server.pid))
            await asyncio.sleep(0.1)

    sampler = asyncio.create_task(sample())
    params = {"kind": "bare", "run": run, "count": count, "rate": rate, "group": group, "pad": SLOW_PAD}
    published = await run_publisher(server.env, params)
    await wait_quiet([reading], published["sent"])
    held = rss_mb(server.pid)
    # It reads again: what the layer kept for it arrives now.
    slow_reader = asyncio.create_task(read_all(slow_ws, slow))
    await wait_quiet([slow], published["sent"])
    done.set()
    await sampler
    after = rss_mb(server.pid)
    for ws in (slow_ws, reading_ws):
        await ws.close()
    await asyncio.gather(reader, slow_reader, return_exceptions=True)
    return {
        "published": published,
        "slow_received": slow.delivered,
        "reading_received": reading.delivered,
        "rss_idle_mb": idle,
        "rss_peak_mb": peak,
        "rss_held_mb": held,
        "rss_after_mb": after,
        "message_bytes": slow.frame_bytes / slow.delivered if slow.delivered else 0,
    }


# Py-spy, for --profile.


def start_daphne_profiler(pid: int, output: str) -> subprocess.Popen[bytes]:
    py_spy = py_spy_path()
    if not os.path.exists(py_spy) and not shutil.which(py_spy):
        raise SystemExit("--profile needs py-spy (pip install py-spy)")
    return start_profiler(pid, output)


# Daphne, the database.


@dataclass
class Server:
    port: int
    pid: int
    env: dict[str, str]
    auditor_token: str
    agent_token: str


def report_tracebacks(path: str, log: Log) -> None:
    """Log the tracebacks in Daphne's output at `path`, but for the expected one: a send to a client gone.

    The bare consumer has no guard for it: when the clients hang up with messages still queued for them
    (a layer that fell behind), each send after the close raises in Daphne and is logged there.
    """
    chunks = tail(path, 100_000_000).split("Traceback (most recent call last):")[1:]
    expected = [chunk for chunk in chunks if "Attempt to send on a closed protocol" in chunk[:3000]]
    if expected:
        log(f"daphne: {len(expected)} sends to clients already gone (bare consumers with a backlog)")
    for chunk in chunks:
        if chunk not in expected:
            log(f"daphne's output holds a traceback:\n{chunk[:3000]}")
            return


def forget_groups(redis_url: str) -> None:
    """Delete the core layer's keys of this run's groups (channels_redis' default prefix, "asgi")."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        if GROUPS_USED:
            client.delete(*(f"asgi:group:{group}" for group in GROUPS_USED))
    finally:
        client.close()


async def measure_layer(server: Server, args: argparse.Namespace, main: bool) -> dict[str, Any]:
    seconds = args.seconds if main else args.other_seconds
    results: dict[str, Any] = {"seconds": seconds}
    results["bare"] = await measure_path("bare", server, args.clients, args.rate, seconds)
    log(f"bare: {results['bare']['delivered']:,} of {results['bare']['expected']:,} delivered")
    if main or args.app_on_every_layer:
        # The app's counterpart: an agent runtime's process publishing on its own (distributed) bus.
        profile = args.profile if main else None
        app = await measure_path("app", server, args.clients, args.rate, seconds, profile)
        results["app"] = app
        log(f"app via the bus: {app['delivered']:,} of {app['expected']:,} delivered")
    if main and args.wait_seconds:
        # The same, each publish awaiting its handlers (the store commits at once, not within 50 ms).
        waited = await measure_path("app", server, args.clients, args.rate, args.wait_seconds, wait=True)
        results["app_waited"] = waited
        log(f"app via the bus, waited: {waited['delivered']:,} of {waited['expected']:,} delivered")
    if main and args.batch:
        # The agent posting to the server instead, BATCH events a POST: ingestion's share made small.
        batched = await measure_path(
            "app", server, args.clients, args.rate, args.other_seconds, via="post", batch=args.batch
        )
        results["app_batched"] = batched
        log(f"app, {args.batch} a POST: {batched['delivered']:,} of {batched['expected']:,} delivered")
    if args.slow_seconds:
        results["slow"] = await slow_client_check(server, args.slow_rate, args.slow_seconds)
        results["layer_class"] = results["slow"]["published"].get("layer", "?")
    else:
        results["layer_class"] = results["bare"]["published"].get("layer", "?")
    return results


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with postgres_database(args.postgres_server, f"bench_live_{os.getpid()}") as url:
        # The server and every publisher child: one database, one Redis, one bus channel of this run's own
        # (Pub/Sub channels ignore the database number).
        env = dict(
            os.environ,
            DJANGO_SETTINGS_MODULE="eventbus_project.settings",
            DATABASE_URL=url,
            REDIS_URL=args.redis_url,
            EVENT_BUS_REDIS_CHANNEL=f"bench-live-{os.getpid()}-{uuid.uuid4().hex[:8]}:events",
            EVENTS_LOG_LEVEL="WARNING",
        )
        started = time.perf_counter()
        manage(env, "migrate", "--noinput", "-v0")
        auditor, agent = api_token(env, AUDITOR, "auditors"), api_token(env, AGENT, "agents")
        log(f"database migrated, tokens made in {time.perf_counter() - started:.1f} s")
        for layer in [args.main_layer, *(other for other in LAYERS if other != args.main_layer)]:
            layer_env = dict(env, REDIS_CHANNEL_LAYER=layer)
            try:
                served = daphne(
                    layer_env,
                    log,
                    app=ASGI_APP,
                    log_prefix="bench_live_daphne_",
                    probe_timeout_s=5,
                    check_output=report_tracebacks,
                )
                with served as (port, pid):
                    log(f"daphne ({layer} layer) up on port {port}, pid {pid}")
                    server = Server(port, pid, layer_env, auditor, agent)
                    results[layer] = asyncio.run(measure_layer(server, args, layer == args.main_layer))
            finally:
                forget_groups(args.redis_url)
    return results


# The report.


def path_line(name: str, path: dict[str, Any]) -> str:
    published = path["published"]
    how = {
        "bare": "group_sends",
        "bus": "publishes on the publisher's bus" + (" (wait_for_handlers)" if path["wait"] else ""),
        "post": f"POSTs of {path['batch']} events" if path["batch"] > 1 else "POSTs",
    }[path["via"]]
    missing = path["expected"] - path["delivered"]
    problems = ""
    if published["error_count"]:
        problems += f", {published['error_count']} failed: {published['errors']}"
    if published["unanswered"]:
        problems += f", {published['unanswered']:,} unanswered {PUBLISH_GRACE_S:g} s after the schedule"
    others = f", other frames {path['other_frames']}" if path["other_frames"] else ""
    lines = [
        f"  {name}: {published['ok']:,} {how} done in {published['seconds']:.1f} s (each p50 "
        f"{published['call_p50_ms']:.2f} ms, p99 {published['call_p99_ms']:.2f} ms; schedule lag max "
        f"{published['lag_max_ms']:.1f} ms{problems}), {path['clients']} clients",
        f"      deliveries {path['delivered']:,} of {path['expected']:,} (missing {missing:,}, duplicates "
        f"{path['duplicates']}{others}): {path['rate']:,.0f}/s",
        f"      publish-to-client p50 {path['p50_ms']:.1f} ms, p99 {path['p99_ms']:.1f} ms, max "
        f"{path['max_ms']:.1f} ms; frame {path['frame_bytes']:.0f} B; CPU Daphne "
        f"{path['daphne_cpu'] * 100:.0f}%, clients {path['clients_cpu'] * 100:.0f}%",
    ]
    if path["via"] == "bus":
        heard, pub = path["server_heard"], published
        # The server's feed is woken by the commit notices: the commit-to-client figures are tens of ms,
        # not LIVE_FEED_POLL_INTERVAL's 0.5 s.
        lines += [
            f"      publisher: {pub['committed']:,} committed in {pub['batches']:,} store batches (last "
            f"{pub['last_batch_ms']:.1f} ms), publish-to-commit p50 {pub['commit_p50_ms']:.1f} ms, p99 "
            f"{pub['commit_p99_ms']:.1f} ms; over Redis {pub['redis_events_sent']:,} events and "
            f"{pub['commit_notices_sent']:,} commit notices sent"
            + (f", {pub['redis_failures']} failed or dropped" if pub["redis_failures"] else "")
            + ("" if pub["drained"] else ", NOT drained at exit"),
            f"      server: heard {heard.get('received', 0):,} events and "
            f"{heard.get('commits_received', 0):,} commit notices; from the commit to the client p50 "
            f"{path['after_answer_p50_ms']:.1f} ms, p99 {path['after_answer_p99_ms']:.1f} ms",
        ]
    elif path["via"] == "post":
        lines.append(
            f"      from the POST's 201 (committed) to the client: p50 "
            f"{path['after_answer_p50_ms']:.1f} ms, p99 {path['after_answer_p99_ms']:.1f} ms"
        )
    return "\n".join(lines)


def report(results: dict[str, Any], args: argparse.Namespace) -> float:
    for layer, figures in results.items():
        main = " (main comparison)" if layer == args.main_layer else ""
        how_long = f"{args.rate} events/s for {figures['seconds']:g} s"
        print(f"layer {layer}{main}: {figures['layer_class']}, {how_long}")
        bare = figures["bare"]
        print(path_line("bare /ws/bare/, group_send from another process", bare))
        if "app" in figures:
            print(path_line("app  /ws/events/, published on another process's bus", figures["app"]))
            layer_ratio = figures["app"]["rate"] / bare["rate"] if bare["rate"] else float("nan")
            print(f"  app/bare deliveries/s on {layer}: {layer_ratio:.2f}")
        if "app_waited" in figures:
            waited = figures["app_waited"]
            print(path_line(f"app, each publish waited, {waited['seconds']:g} s", waited))
        if "app_batched" in figures:
            batched = figures["app_batched"]
            print(path_line(f"app, {args.batch} a POST, {batched['seconds']:g} s", batched))
    if any("slow" in figures for figures in results.values()):
        print(
            f"slow client: one stops reading (receive buffer {SLOW_RCVBUF} B) beside one reading, on the "
            f"bare consumer, while {args.slow_rate:,} messages/s of {SLOW_PAD // 1000} KB go to their group "
            f"for {args.slow_seconds:g} s; then it reads again"
        )
    for layer, figures in results.items():
        if "slow" not in figures:
            continue
        slow = figures["slow"]
        sent = slow["published"]["ok"]
        grown = slow["rss_peak_mb"] - slow["rss_idle_mb"]
        print(
            f"  {layer}: sent {sent:,}; the slow client got {slow['slow_received']:,} (lost "
            f"{sent - slow['slow_received']:,}), the reading one {slow['reading_received']:,}; Daphne RSS "
            f"idle {slow['rss_idle_mb']:.1f} MB, peak {slow['rss_peak_mb']:.1f} MB (+{grown:.1f}), before "
            f"the slow client read again {slow['rss_held_mb']:.1f} MB, after {slow['rss_after_mb']:.1f} MB"
        )
    main = results[args.main_layer]
    ratio: float = main["app"]["rate"] / main["bare"]["rate"] if main["bare"]["rate"] else float("nan")
    p99 = main["app"]["p99_ms"]
    print(f"goals ({args.main_layer} layer, the app's events published on another process's bus):")
    met = "met" if ratio >= GOAL_RATIO else "MISSED"
    print(f"  app/bare deliveries/s {ratio:.2f} (goal >= {GOAL_RATIO}): {met}")
    print(f"  app p99 {p99:.1f} ms (goal < {GOAL_P99_MS:.0f} ms): {'met' if p99 < GOAL_P99_MS else 'MISSED'}")
    return ratio


def non_negative(kind: Any) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if not value >= 0:
            raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
        return value

    return parse


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", type=positive_int, default=50, help="WebSocket clients per path (50)")
    parser.add_argument("--rate", type=positive_int, default=200, help="events published per second (200)")
    parser.add_argument("--seconds", type=positive_float, default=20, help="main layer's run per path (20)")
    parser.add_argument(
        "--other-seconds", type=positive_float, default=5, help="other layer's run per path (5)"
    )
    parser.add_argument("--main-layer", choices=LAYERS, default="core", help="the layer of the ratio (core)")
    parser.add_argument(
        "--app-on-every-layer", action="store_true", help="the app path on the other layer too"
    )
    parser.add_argument(
        "--wait-seconds",
        type=non_negative(float),
        default=5,
        help="the app path with publish(wait_for_handlers=True), main layer (5; 0: not run)",
    )
    parser.add_argument(
        "--batch",
        type=non_negative(int),
        default=10,
        help="events per POST of the app path's POST run, main layer, --other-seconds (10; 0: not run)",
    )
    parser.add_argument("--slow-rate", type=positive_int, default=400, help="slow-client check: messages/s")
    parser.add_argument(
        "--slow-seconds", type=non_negative(float), default=6, help="slow-client check: seconds (6; 0: none)"
    )
    parser.add_argument("--profile", help="py-spy's output for the main app path (.svg, .json, .txt)")
    parser.add_argument("--postgres-server", default=DEFAULT_POSTGRES_SERVER, help="PostgreSQL, no database")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help=f"Redis ({DEFAULT_REDIS_URL})")
    parser.add_argument("--publisher-child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.publisher_child:  # the settings come from the parent's environment
        print(RESULT_PREFIX + json.dumps(publisher_child(json.loads(args.publisher_child))), flush=True)
        return

    args.postgres_server = args.postgres_server.rstrip("/")
    print(
        f"Python {platform.python_version()}, daphne {version('daphne')}, channels {version('channels')}, "
        f"channels_redis {version('channels_redis')}, websockets {version('websockets')}; "
        f"{os.cpu_count()} CPUs; {args.clients} clients, {args.rate} events/s",
        flush=True,
    )
    started = time.perf_counter()
    results = run(args)
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"all runs took {time.perf_counter() - started:.1f} s; load average at the end {load}")
    ratio = report(results, args)
    print(f"ratio app/bare deliveries: {ratio:.2f}")


if __name__ == "__main__":
    main()
