"""Webhook delivery: latency after the commit, completeness and order through a failing receiver, and
what the outbox costs ingestion.

In one process (a fresh, migrated SQLite file or PostgreSQL database, thrown away at the end), with the
store, its audit and metrics hooks and the notify outbox hook installed as the server installs them, and
the delivery worker running on the same asyncio loop as the bus (as under Daphne). The receivers are
plain `http.server`s in a child process (so they take no CPU from the measured loop); each verifies the
Standard Webhooks signature with the standardwebhooks library and writes what it accepted to a file.

  1. Latency: one healthy endpoint; 200 events published one at a time (`wait_for_handlers=True`, so
     the publish returns after the commit), 20 ms apart. Latency = the receiver's clock when the request
     arrives minus the clock just *before* the publish: an upper bound on "commit to delivery".
     Goal: median < 100 ms.
  2. Ingest without endpoints: N events (default 10,000) published fire-and-forget, until committed.
  3. Ingest with 3 endpoints (every event to each), the worker stopped: the same N fresh events. The
     store is the outbox (each endpoint's worker queues from it), so this costs the store nothing more.
     Then the worker starts and delivers them all; endpoint 3 refuses everything (HTTP 500) for the
     first FAIL_S seconds (default 10 s; the issue's
     30 s with `--fail-s 30`: scaled down by default to keep the run well under 2 minutes). The worker
     retries with WEBHOOK_RETRY_BASE_S=0.1, capped at 1 s.
     Meanwhile N events no endpoint takes are ingested beside the worker (for information). Then wait
     until all three receivers hold all the events: complete and in position order at each.
     Rounds 2 and 3 alternate (`--rounds`, default 2) and the best of each counts.
  Goal: ingest rate with endpoints / without >= 0.90 (printed last).

Run: `.venv/bin/python benchmarks/webhook_delivery.py [--events N] [--fail-s S] [--database sqlite|postgres]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from _common import DEFAULT_POSTGRES_SERVER, ROOT, free_port, percentile, postgres_database, sqlite_file

# The endpoints take agent_switched only; this type is audited as agent_switched is, so both cost the same.
UNTAKEN = "agent_error_occurred"


def serve(port: int, secret_file: str, log_file: str, fail_until: float) -> None:
    """A receiver (in a child process): verifies, accepts (or refuses before `fail_until`), logs."""
    from standardwebhooks import Webhook

    log = open(log_file, "a", buffering=1)  # noqa: SIM115 - open for the process's life

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # Headers and body are two writes: without this, Nagle and the client's delayed ACK add
            # 40 ms to every keep-alive request.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_POST(self) -> None:  # noqa: N802
            arrived = time.time()
            body = self.rfile.read(int(self.headers["content-length"]))
            secret = Path(secret_file).read_text().strip()
            accepted = time.time() >= fail_until
            try:
                event = Webhook(secret).verify(body, {k.lower(): v for k, v in self.headers.items()})
            except Exception:
                accepted, event = False, None
            if accepted and event is not None:
                log.write(f"{event['position']} {arrived}\n")
            self.send_response(200 if accepted else 500)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--fail-s", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--postgres-server", default=DEFAULT_POSTGRES_SERVER)
    args = parser.parse_args()
    with ExitStack() as stack:
        if args.database == "postgres":
            url = stack.enter_context(postgres_database(args.postgres_server, f"bench_hooks_{os.getpid()}"))
        else:
            url = "sqlite:///" + stack.enter_context(sqlite_file("bench_hooks_"))
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_hooks_files_")))
        os.environ.update(
            DATABASE_URL=url,
            DJANGO_SETTINGS_MODULE="eventbus_project.settings",
            EVENTS_LOG_LEVEL="WARNING",
            WEBHOOK_ALLOW_HTTP="true",
            WEBHOOK_ALLOW_LOOPBACK="true",
        )
        sys.path.insert(0, str(ROOT))
        import django

        django.setup()
        from django.conf import settings
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        settings.WEBHOOK_RETRY_BASE_S = 0.1
        settings.WEBHOOK_RETRY_MAX_DELAY_S = 1.0
        settings.WEBHOOK_POLL_INTERVAL_S = 0.5
        settings.HITL_WARN_BEFORE_S = 0
        asyncio.run(run(args, work))


async def run(args: argparse.Namespace, work: Path) -> None:
    import logging

    from asgiref.sync import sync_to_async

    from audit.subscribers import install_subscribers
    from events.base import BaseEvent
    from events.event_bus import event_bus
    from events.event_store import event_store
    from notify.delivery import DeliveryWorker
    from notify.models import WebhookEndpoint
    from notify.services import webhook_endpoint_save
    from notify.webhooks import delivery_signal

    logging.getLogger("notify").setLevel(logging.ERROR)
    install_subscribers(event_bus)
    context = multiprocessing.get_context("spawn")
    receivers: list[dict[str, Any]] = []
    for index in range(3):
        port = free_port()
        secret_file, log_file = work / f"secret{index}", work / f"log{index}"
        secret_file.write_text("")
        log_file.write_text("")
        receivers.append(
            {"port": port, "secret": secret_file, "log": log_file, "url": f"http://127.0.0.1:{port}/"}
        )
    processes: list[Any] = []

    def start(index: int, fail_until: float) -> None:
        r = receivers[index]
        proc = context.Process(
            target=serve, args=(r["port"], str(r["secret"]), str(r["log"]), fail_until), daemon=True
        )
        proc.start()
        processes.append(proc)

    def accepted(index: int) -> list[tuple[int, float]]:
        lines = receivers[index]["log"].read_text().split()
        return [(int(lines[i]), float(lines[i + 1])) for i in range(0, len(lines) - 1, 2)]

    def make_events(count: int, event_type: str = "agent_switched") -> list[BaseEvent]:
        return [
            BaseEvent(event_type, "agent", session_id="bench", data={"n": n}, source="bench")
            for n in range(count)
        ]

    async def ingest(events: list[BaseEvent]) -> float:
        started = time.perf_counter()
        for event in events:
            await event_bus.publish(event)
        await event_bus.drain()
        await event_store.flush()
        return len(events) / (time.perf_counter() - started)

    def add_endpoint(index: int) -> None:
        endpoint = webhook_endpoint_save(url=receivers[index]["url"], event_types=["agent_switched"])
        receivers[index]["secret"].write_text(endpoint.secret)

    worker = DeliveryWorker()
    worker_task = asyncio.create_task(worker.run())
    await ingest(make_events(500))  # warm-up: connections, caches

    # 1. Latency, one healthy endpoint.
    start(0, 0.0)
    await sync_to_async(add_endpoint)(0)
    await asyncio.sleep(1.0)
    before: dict[int, float] = {}
    for _ in range(200):
        event = make_events(1)[0]
        moment = time.time()
        await event_bus.publish(event, wait_for_handlers=True)
        assert event.position is not None
        before[event.position] = moment
        await asyncio.sleep(0.02)
    deadline = time.monotonic() + 10
    while len([p for p, _ in accepted(0) if p in before]) < len(before) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    latencies = [(at - before[p]) * 1000 for p, at in accepted(0) if p in before]
    await sync_to_async(lambda: WebhookEndpoint.objects.all().delete())()
    delivery_signal.invalidate()
    median = statistics.median(latencies)
    print(
        f"latency commit→receiver, healthy endpoint: median {median:.1f} ms, p95 "
        f"{percentile(latencies, 95):.1f} ms, max {max(latencies):.1f} ms ({len(latencies)} of {len(before)})"
    )

    # 2 and 3: ingest without endpoints (A), with 3 enabled endpoints and the worker stopped (B: what the
    # endpoints cost the store), and A again; A's events are of a type no endpoint takes (a disabled
    # endpoint is only paused: it would take them later); then deliver B's events with the failing
    # receiver, and meanwhile ingest events no endpoint takes (C: beside a busy worker, for information).
    worker_task.cancel()
    await asyncio.gather(worker_task, return_exceptions=True)
    for index in range(3):
        receivers[index]["log"].write_text("")
        await sync_to_async(add_endpoint)(index)
    from notify.services import webhook_endpoint_disable

    def set_enabled(enabled: bool) -> None:
        for endpoint in WebhookEndpoint.objects.all():
            if enabled:
                webhook_endpoint_save(
                    endpoint=endpoint,
                    url=endpoint.url,
                    event_types=endpoint.event_types,
                    secret=endpoint.secret,
                    enabled=True,
                )
            else:
                webhook_endpoint_disable(endpoint_id=endpoint.pk, reason="benchmark: round without endpoints")

    without, with_hooks = [], []
    batches: list[list[BaseEvent]] = []
    for _ in range(args.rounds):
        await sync_to_async(set_enabled)(False)
        without.append(await ingest(make_events(args.events, UNTAKEN)))
        await sync_to_async(set_enabled)(True)
        batches.append(make_events(args.events))
        with_hooks.append(await ingest(batches[-1]))
    await sync_to_async(set_enabled)(False)
    without.append(await ingest(make_events(args.events, UNTAKEN)))  # A once more after the last B
    await sync_to_async(set_enabled)(True)
    positions = [e.position for batch in batches for e in batch]
    start(1, 0.0)
    start(2, time.time() + args.fail_s)
    worker = DeliveryWorker()
    worker_task = asyncio.create_task(worker.run())
    began = time.monotonic()
    beside = await ingest(
        [
            BaseEvent("session_created", "session", session_id="bench", data={}, source="bench")
            for _ in range(args.events)
        ]
    )
    deadline = began + args.fail_s + 100
    while time.monotonic() < deadline:
        if all(len(accepted(i)) >= len(positions) for i in range(3)):
            break
        await asyncio.sleep(0.2)
    failing = f" (refused everything for the first {args.fail_s:g} s)"
    for index in range(3):
        got = [p for p, _ in accepted(index)]
        first_seen = list(dict.fromkeys(got))
        print(
            f"endpoint {index + 1}{failing if index == 2 else ''}: "
            f"{len(set(got) & set(positions))}/{len(positions)} events, {len(got) - len(set(got))} repeats, "
            f"in position order: {first_seen == sorted(first_seen)}, complete: {set(positions) <= set(got)}, "
            f"done {time.monotonic() - began:.1f} s after the worker started"
        )
    print(
        f"ingest without endpoints: {', '.join(f'{r:,.0f}' for r in without)} events/s; with 3 endpoints "
        f"(worker stopped): {', '.join(f'{r:,.0f}' for r in with_hooks)} events/s"
    )
    print(
        f"ingest beside the worker delivering 3 x {len(positions):,} events: {beside:,.0f} events/s "
        f"(ratio {beside / statistics.mean(without):.3f}; shares the loop and the CPU with the deliveries)"
    )
    worker_task.cancel()
    await asyncio.gather(worker_task, return_exceptions=True)
    for proc in processes:
        proc.terminate()
    print(
        json.dumps(
            {
                "latency_median_ms": round(median, 1),
                "ingest_without": round(max(without)),
                "ingest_with": round(max(with_hooks)),
            }
        )
    )
    print(
        f"ratio ingest with/without endpoints (mean of {len(with_hooks)} / mean of the {len(without)} "
        f"around them): {statistics.mean(with_hooks) / statistics.mean(without):.3f}"
    )


if __name__ == "__main__":
    main()
