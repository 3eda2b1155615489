"""The agent-side EventPublisher against posting the same events directly, on one Daphne.

What is measured, in a fresh database (a new `bench_pub_<pid>` database on the PostgreSQL server, or a
temporary SQLite file; migrated, thrown away at the end), against one Daphne serving the project:

  A. `eventbus_client.EventPublisher(url, token, batch_size=500)`: N events (default 100,000) given to
     `publish()` one by one as fast as the caller can, then `flush()`. The time runs from the first
     publish until flush returns (every event acknowledged). Also the caller's cost of `publish()`
     (checking, encoding, buffering; timed call by call): its median in microseconds.
  B. the anchor, same server: the same number of events posted directly, in lists of 500, with one
     `httpx.Client` (sequential POSTs, keep-alive, `json=`), each answered 201 before the next. They
     carry an `event_id` and a `timestamp` as the publisher's do (what any client that retries safely
     must send), so both phases put the same requests on the wire.

Both phases' events are built before they are timed (plain dicts, as an agent would hand them over) and
each phase's session is counted in the database afterwards: exactly N rows, or the run fails. A warm-up
of 2,000 direct events precedes both; then A and B alternate, each with half the events, as A B B A, so
that a drift of the server (its table grows, its caches warm) weighs on both alike. Goal (issue 12):
`ratio publisher/direct` >= 0.9, the last line printed.

Run from the repository root:
`.venv/bin/python benchmarks/client_publisher.py [--events N] [--database postgres|sqlite]`.
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import statistics
import sys
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime
from typing import Any

import httpx
from _common import (
    DEFAULT_POSTGRES_SERVER,
    api_token,
    daphne,
    manage,
    positive_int,
    postgres_database,
    postgres_version,
    sqlite_file,
)

from eventbus_client import EventPublisher

BATCH = 500
WARMUP = 2_000


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_events(count: int, session_id: str, *, with_ids: bool = False) -> list[dict[str, Any]]:
    """`count` events of one session; `with_ids`: with the event_id and timestamp publish() would add."""
    now = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    return [
        {
            **({"event_id": str(uuid.uuid4()), "timestamp": now} if with_ids else {}),
            "event_type": "tool_execution_completed",
            "session_id": session_id,
            "source": "bench.client_publisher",
            "data": {"tool_name": "web_search", "call_id": f"{session_id}-{n}", "duration_ms": n % 1000},
        }
        for n in range(count)
    ]


def post_direct(url: str, token: str, events: list[dict[str, Any]]) -> float:
    """Seconds to post `events` in lists of BATCH, one request at a time."""
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
        started = time.perf_counter()
        for start in range(0, len(events), BATCH):
            answer = http.post("/api/events/", json=events[start : start + BATCH])
            if answer.status_code != 201:
                raise RuntimeError(f"direct POST answered {answer.status_code}: {answer.text[:300]}")
        return time.perf_counter() - started


def publish_all(url: str, token: str, events: list[dict[str, Any]]) -> tuple[float, float, dict[str, int]]:
    """(seconds until flush returned, median µs per publish() call, the publisher's stats)."""
    publisher = EventPublisher(url, token, batch_size=BATCH, max_buffer=max(len(events), 100_000))
    costs = [0] * len(events)
    clock = time.perf_counter_ns
    publish = publisher.publish
    try:
        started = time.perf_counter()
        for n, event in enumerate(events):
            before = clock()
            publish(event)
            costs[n] = clock() - before
        if not publisher.flush(timeout=600):
            raise RuntimeError(f"flush did not finish: {publisher.stats()}")
        elapsed = time.perf_counter() - started
    finally:
        publisher.close(timeout=10)
    return elapsed, statistics.median(costs) / 1000, publisher.stats()


def stored(database_url: str, session_id: str) -> int:
    query = "SELECT COUNT(DISTINCT event_id) FROM events_storedevent WHERE session_id = %s"
    if database_url.startswith("sqlite:"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as db:
            return int(db.execute(query.replace("%s", "?"), [session_id]).fetchone()[0])
    import psycopg

    with psycopg.connect(database_url) as db:
        row = db.execute(query, [session_id]).fetchone()
        return int(row[0]) if row else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=positive_int, default=100_000, help="events per phase (100,000)")
    parser.add_argument("--database", choices=("postgres", "sqlite"), default="postgres", help="(postgres)")
    parser.add_argument("--postgres-server", default=DEFAULT_POSTGRES_SERVER, help="a URL with no database")
    args = parser.parse_args()
    server = args.postgres_server.rstrip("/")
    where = postgres_version(server) if args.database == "postgres" else f"SQLite {sqlite3.sqlite_version}"
    print(f"Python {platform.python_version()}, httpx {httpx.__version__}, {where}; {os.cpu_count()} CPUs")

    with ExitStack() as stack:
        if args.database == "postgres":
            database_url = stack.enter_context(postgres_database(server, f"bench_pub_{os.getpid()}"))
        else:
            database_url = "sqlite:///" + stack.enter_context(sqlite_file("bench_pub_"))
        env = dict(os.environ, DATABASE_URL=database_url, EVENTS_LOG_LEVEL="WARNING", DEBUG="false")
        log("migrating")
        manage(env, "migrate", "--noinput", "-v0")
        token = api_token(env, "bench-publisher", "agents")
        port, _pid = stack.enter_context(daphne(env, log, stop_timeout_s=45))
        url = f"http://127.0.0.1:{port}"
        run = uuid.uuid4().hex[:8]

        post_direct(url, token, build_events(WARMUP, f"warmup-{run}", with_ids=True))

        # A, B, B, A (half the events each time): a drift of the server (its table grows, its caches warm)
        # weighs on both phases alike.
        half = args.events // 2
        sessions = {"publisher": f"publisher-{run}", "direct": f"direct-{run}"}
        publisher_s = direct_s = 0.0
        costs: list[float] = []
        batches = 0
        for phase, size in (
            ("publisher", half),
            ("direct", half),
            ("direct", args.events - half),
            ("publisher", args.events - half),
        ):
            events = build_events(size, sessions[phase], with_ids=phase == "direct")
            log(f"{phase}: {size:,} events")
            if phase == "publisher":
                elapsed, cost, stats = publish_all(url, token, events)
                if stats["sent"] != size:
                    raise RuntimeError(f"publisher: {stats}")
                publisher_s += elapsed
                costs.append(cost)
                batches += stats["batches"]
            else:
                direct_s += post_direct(url, token, events)
        for phase, session in sessions.items():
            count = stored(database_url, session)
            if count != args.events:
                raise RuntimeError(f"{phase}: {count} of {args.events} events stored")
        publish_us = statistics.median(costs)

    publisher_rate = args.events / publisher_s
    direct_rate = args.events / direct_s
    print(f"publish() in the caller: median {publish_us:.1f} µs per call")
    print(f"EventPublisher: {publisher_rate:,.0f} events/s ({publisher_s:.1f} s, {batches} batches)")
    print(f"direct POSTs of {BATCH}: {direct_rate:,.0f} events/s ({direct_s:.1f} s)")
    print(f"ratio publisher/direct: {publisher_rate / direct_rate:.2f}")


if __name__ == "__main__":
    main()
