"""Ingest throughput of the durable event store, against a raw bulk load of the same rows.

What is measured, on PostgreSQL and on SQLite, each in a fresh database (a new `bench_store_<pid>`
database on the PostgreSQL server, a temporary SQLite file, both migrated and thrown away at the end),
each in a subprocess of its own since Django's settings are process-wide:

  A. this project: N pre-built events (default 100,000; a mix of five types, see EVENT_MIX: a fifth
     are agent switches, which the audit hook chains into the hash-chained trail, and four fifths
     update the metric counters) published fire-and-forget on the app's bus with the store and the
     audit and metrics subscribers installed (`install_subscribers(event_bus)`): `await
     event_bus.publish(e)` for each on one asyncio loop, then `await event_bus.drain()` and `await
     event_store.flush()`. The time runs from the first publish until every event is committed.
     Building the events is not timed. Afterwards `StoredEvent.objects.count() == N`, the audit trail
     holds one entry per agent switch and the counters add up, so it cannot silently measure nothing.
  B. the anchor, same run, same database: the same N rows, with the same columns and values the store
     writes (`EVENT_COLUMNS`, as `StoreWriter._insert_rows` builds them, JSON encoding included), into
     an identical table in one transaction, the commit included. On PostgreSQL a raw psycopg
     `COPY ... FROM STDIN` with `write_row` into `CREATE TABLE bench_copy (LIKE events_storedevent
     INCLUDING ALL)` (same indexes and constraints; LIKE copies no triggers). On SQLite, which has no
     COPY, a raw `sqlite3` `executemany` INSERT into a copy of the table made from its DDL in
     `sqlite_master` (table and indexes renamed, triggers left out), with the project's pragmas.
     Before B (and before C), untimed, the database finishes what A left it: `VACUUM (ANALYZE)` and
     `CHECKPOINT` on PostgreSQL, `PRAGMA wal_checkpoint(TRUNCATE)` on SQLite, so B does not run beside
     an autovacuum or a checkpoint of A's rows.
  C. `POST /api/events/` against a running Daphne: N fresh events in batches of 500 (JSON lists,
     `Authorization: Bearer <token>` of `manage.py create_api_token bench-agent --group agents`) from
     2 client threads over keep-alive connections; events/s counts the events of 201 answers. Only when
     the ingestion API exists (events/api.py, a route for /api/events/ and the create_api_token
     command); otherwise reported as skipped.

Goal (issue 15; the store issue's was 0.50): the store at least 0.6 as fast as the raw bulk load, i.e.
`ratio store/COPY` >= 0.60 on each database (the last line printed; on SQLite the anchor is executemany,
the label stays).
For scale, measured earlier on this kind of machine (2 cores): COPY about 59k rows/s, one row per
commit about 2k rows/s, SQLite executemany about 42k rows/s.

Run from the repository root:
`.venv/bin/python benchmarks/store_ingest.py [--events N] [--database postgres|sqlite|both]`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import http.client
import json
import os
import platform
import re
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from importlib.metadata import version
from typing import Any

import psycopg
from _common import (
    DEFAULT_POSTGRES_SERVER,
    RESULT_PREFIX,
    ROOT,
    api_token,
    daphne,
    drop_postgres,
    positive_int,
    postgres_database,
    result_of,
    sqlite_file,
)

sys.path.insert(0, str(ROOT))

# Plain classes, no Django settings needed; whatever touches models is imported once they are chosen.
from events.agent_events import (  # noqa: E402
    AgentProcessingCompletedEvent,
    AgentProcessingStartedEvent,
    AgentSwitchedEvent,
)
from events.base import BaseEvent  # noqa: E402
from events.event_types import EventType  # noqa: E402
from events.tool_events import ToolExecutionCompletedEvent, ToolExecutionRequestedEvent  # noqa: E402

DATABASES = ("postgres", "sqlite")
API_BATCH = 500
API_CLIENTS = 2
SKIPPED_API = "skipped: ingestion API not present yet"
# One "turn" of an agent session, repeated: which events, and what the store's hooks do with them.
EVENT_MIX = (
    "agent_switched (audited + metrics)",
    "agent_processing_started",
    "tool_execution_requested (metrics)",
    "tool_execution_completed (metrics)",
    "agent_processing_completed (metrics)",
)
AGENTS = ("orchestrator", "coder", "researcher", "reviewer")
TOOLS = ("web_search", "run_python", "read_file", "write_file", "http_get")
SESSIONS = 200


def log(database: str, message: str) -> None:
    print(f"[{database}] {message}", file=sys.stderr, flush=True)


# The events.


def build_events(count: int, tag: str = "") -> list[BaseEvent]:
    """`count` typed events in the EVENT_MIX order, each with a fresh event_id; not timed."""
    events: list[BaseEvent] = []
    for i in range(count):
        turn = i // len(EVENT_MIX)
        common: dict[str, Any] = {
            "session_id": f"bench{tag}-session-{turn % SESSIONS}",
            "correlation_id": f"bench{tag}-turn-{turn}",
            "source": "bench.store_ingest",
        }
        agent = AGENTS[(turn + 1) % len(AGENTS)]
        tool = TOOLS[turn % len(TOOLS)]
        call_id = f"bench{tag}-call-{turn}"
        kind = i % len(EVENT_MIX)
        event: BaseEvent
        if kind == 0:
            previous = AGENTS[turn % len(AGENTS)]
            event = AgentSwitchedEvent(
                from_agent=previous, to_agent=agent, reason="the plan needs code", confidence="high", **common
            )
        elif kind == 1:
            event = AgentProcessingStartedEvent(agent_type=agent, message="write the parser", **common)
        elif kind == 2:
            event = ToolExecutionRequestedEvent(
                tool_name=tool,
                arguments={"query": f"item {turn}", "limit": 10},
                call_id=call_id,
                agent=agent,
                **common,
            )
        elif kind == 3:
            event = ToolExecutionCompletedEvent(
                tool_name=tool,
                call_id=call_id,
                result={"items": 3, "ok": True},
                duration_ms=12.5,
                agent=agent,
                **common,
            )
        else:
            event = AgentProcessingCompletedEvent(
                agent_type=agent, duration_ms=250 + turn % 100, success=turn % 50 != 7, **common
            )
        events.append(event)
    return events


def expected_counts(events: list[BaseEvent]) -> dict[str, int]:
    """What the audit and metrics hooks must have recorded for `events`."""
    by_type: dict[str, int] = {}
    for event in events:
        by_type[str(event.event_type)] = by_type.get(str(event.event_type), 0) + 1
    return {
        "audit_entries": by_type.get(EventType.AGENT_SWITCHED, 0),
        "agent_switches": by_type.get(EventType.AGENT_SWITCHED, 0),
        "tool_requested": by_type.get(EventType.TOOL_EXECUTION_REQUESTED, 0),
        "tool_completed": by_type.get(EventType.TOOL_EXECUTION_COMPLETED, 0),
        "agent_processing": by_type.get(EventType.AGENT_PROCESSING_COMPLETED, 0),
    }


# A: this project's store, through the bus.


def measure_store(database: str, events: list[BaseEvent]) -> dict[str, Any]:
    from django.db.models import Sum

    from audit.models import AuditEntry, MetricCounter
    from audit.subscribers import install_subscribers
    from events.event_bus import event_bus
    from events.event_store import event_store
    from events.models import StoredEvent

    install_subscribers(event_bus)
    event_store.reset_stats()
    before = StoredEvent.objects.count()
    assert before == 0, f"{database}: the fresh database holds {before} events already"

    async def run() -> tuple[float, dict[str, Any]]:
        publish = event_bus.publish
        gc.collect()
        start = time.perf_counter()
        for event in events:
            await publish(event)
        drained = await event_bus.drain()
        flushed = await event_store.flush()
        elapsed = time.perf_counter() - start
        assert drained and flushed, f"{database}: drain={drained} flush={flushed}"
        stats = event_store.get_stats()
        await event_bus.shutdown()  # commits nothing more; closes the writer thread's connection
        return elapsed, stats

    elapsed, stats = asyncio.run(run())

    # Back in synchronous code, the loop gone: check with the ORM what was committed.
    n = len(events)
    stored = StoredEvent.objects.count()
    assert stored == n, f"{database}: StoredEvent.objects.count() is {stored}, expected {n}"
    assert stats["stored"] == n and stats["rejected"] == 0, f"{database}: store stats {stats}"
    expected = expected_counts(events)
    audit_entries = AuditEntry.objects.count()
    assert audit_entries == expected["audit_entries"], f"{database}: {audit_entries} audit entries"

    def metric(name: str, field: str) -> int:
        total = MetricCounter.objects.filter(metric=name, field=field).aggregate(total=Sum("value"))["total"]
        return int(total or 0)

    counted = {
        "agent_switches": metric("agent_switches", "count"),
        "tool_requested": metric("tool_executions", "requested"),
        "tool_completed": metric("tool_executions", "completed"),
        "agent_processing": metric("agent_processing", "count"),
    }
    for key, value in counted.items():
        assert value == expected[key], f"{database}: metric {key} is {value}, expected {expected[key]}"
    return {
        "seconds": elapsed,
        "batches": stats["batches"],
        "audit_entries": audit_entries,
        "metric_rows": MetricCounter.objects.count(),
    }


# B: the anchors, the same rows as the store writes them.


def measure_copy(dsn: str, events: list[BaseEvent]) -> tuple[float, int]:
    """Raw psycopg COPY of the store's rows into a copy of events_storedevent, one transaction."""
    from events.columns import EVENT_COLUMNS

    columns = ", ".join(EVENT_COLUMNS)
    dumps = json.dumps
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE bench_copy (LIKE events_storedevent INCLUDING ALL)")
        conn.commit()
        gc.collect()
        start = time.perf_counter()
        now = datetime.now(UTC)
        with conn.cursor() as cursor, cursor.copy(f"COPY bench_copy ({columns}) FROM STDIN") as copy:
            for position, event in enumerate(events, start=1):
                copy.write_row(
                    (
                        position,
                        event.event_id,
                        str(event.event_type),
                        str(event.event_category),
                        event.timestamp,
                        event.session_id,
                        event.correlation_id,
                        event.causation_id,
                        dumps(event.data, ensure_ascii=False),
                        event.source,
                        event.version,
                        event.actor,
                        now,
                    )
                )
        conn.commit()
        elapsed = time.perf_counter() - start
        row = conn.execute("SELECT count(*) FROM bench_copy").fetchone()
        indexes = {
            table: count
            for table, count in conn.execute(
                "SELECT tablename, count(*) FROM pg_indexes "
                "WHERE tablename IN ('events_storedevent', 'bench_copy') GROUP BY tablename"
            ).fetchall()
        }
    copied = row[0] if row else 0
    assert copied == len(events), f"postgres: COPY stored {copied} rows, expected {len(events)}"
    assert indexes["bench_copy"] == indexes["events_storedevent"], f"postgres: indexes {indexes}"
    return elapsed, indexes["bench_copy"]


def copy_table_ddl(conn: sqlite3.Connection, table: str, copy: str) -> list[str]:
    """The DDL of `table` and its indexes (not its triggers), renamed to `copy` and `copy`_<index>."""
    rows = conn.execute(
        "SELECT type, sql FROM sqlite_master WHERE tbl_name = ? AND type IN ('table', 'index') "
        "AND sql IS NOT NULL ORDER BY type = 'index'",
        (table,),
    ).fetchall()
    statements = []
    for kind, ddl in rows:
        ddl = ddl.replace(f'"{table}"', f'"{copy}"')
        if kind == "index":
            ddl = re.sub(r'^(CREATE (?:UNIQUE )?INDEX )"([^"]+)"', rf'\1"{copy}_\2"', ddl)
        statements.append(ddl)
    assert statements and statements[0].startswith("CREATE TABLE"), f"no DDL for {table}: {rows}"
    return statements


def measure_executemany(path: str, events: list[BaseEvent]) -> tuple[float, int]:
    """Raw sqlite3 executemany of the store's rows into a copy of events_storedevent, one transaction."""
    from django.db import connection

    from events.columns import EVENT_COLUMNS

    columns = ", ".join(EVENT_COLUMNS)
    marks = ", ".join(["?"] * len(EVENT_COLUMNS))
    adapt_datetime = connection.ops.adapt_datetimefield_value
    dumps = json.dumps
    conn = sqlite3.connect(path, isolation_level=None, timeout=20)
    try:
        # The project's pragmas (settings: WAL, synchronous=NORMAL).
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        statements = copy_table_ddl(conn, "events_storedevent", "bench_copy")
        for statement in statements:
            conn.execute(statement)
        gc.collect()
        start = time.perf_counter()
        stored_at = adapt_datetime(datetime.now(UTC))
        rows = [
            (
                position,
                uuid.UUID(event.event_id).hex,
                str(event.event_type),
                str(event.event_category),
                adapt_datetime(event.timestamp),
                event.session_id,
                event.correlation_id,
                event.causation_id,
                dumps(event.data, ensure_ascii=False),
                event.source,
                event.version,
                event.actor,
                stored_at,
            )
            for position, event in enumerate(events, start=1)
        ]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(f"INSERT INTO bench_copy ({columns}) VALUES ({marks})", rows)
        conn.execute("COMMIT")
        elapsed = time.perf_counter() - start
        copied = conn.execute("SELECT count(*) FROM bench_copy").fetchone()[0]
        indexes = dict(
            conn.execute(
                "SELECT tbl_name, count(*) FROM sqlite_master WHERE type = 'index' "
                "AND tbl_name IN ('events_storedevent', 'bench_copy') GROUP BY tbl_name"
            ).fetchall()
        )
    finally:
        conn.close()
    assert copied == len(events), f"sqlite: executemany stored {copied} rows, expected {len(events)}"
    assert indexes["bench_copy"] == indexes["events_storedevent"], f"sqlite: indexes {indexes}"
    return elapsed, indexes["bench_copy"]


def settle(database: str, target: str) -> None:
    """Untimed, between measurements: finish the background work the last one left to the database
    (autovacuum of the new rows, dirty pages to write, a long WAL), so the next does not pay for it."""
    if database == "postgres":
        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute("VACUUM (ANALYZE)")
            conn.execute("CHECKPOINT")
    else:
        lite = sqlite3.connect(target, isolation_level=None, timeout=20)
        try:
            lite.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            lite.close()


# C: the ingestion API under Daphne, when it exists.


def api_missing() -> str | None:
    """Why the ingestion API cannot be measured yet, or None when it can."""
    from django.core.management import get_commands
    from django.urls import Resolver404, resolve

    if not (ROOT / "events" / "api.py").exists():
        return "events/api.py does not exist"
    if "create_api_token" not in get_commands():
        return "manage.py create_api_token does not exist"
    try:
        resolve("/api/events/")
    except Resolver404:
        return "no route for /api/events/"
    return None


def measure_api(database: str, count: int) -> dict[str, Any]:
    from events.models import StoredEvent

    missing = api_missing()
    if missing is not None:
        log(database, f"{SKIPPED_API} ({missing})")
        return {"status": "skipped", "reason": missing}
    # The command sets up the group (and its permission to publish) when it is missing.
    token = api_token(None, "bench-agent", "agents", timeout_s=60)
    events = build_events(count, tag="-api")
    bodies = [
        (
            len(events[i : i + API_BATCH]),
            json.dumps([event.to_dict() for event in events[i : i + API_BATCH]]).encode(),
        )
        for i in range(0, len(events), API_BATCH)
    ]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    before = StoredEvent.objects.count()
    # This process's DATABASE_URL (the child's) goes to Daphne with the environment.
    env = dict(os.environ, EVENTS_LOG_LEVEL="WARNING")
    with daphne(env, partial(log, database), stop_timeout_s=45) as (port, _pid):
        log(database, f"daphne up on port {port}")
        batches = iter(bodies)
        lock = threading.Lock()
        accepted = [0] * API_CLIENTS
        created = [0] * API_CLIENTS
        errors: list[str] = []

        def client(index: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            try:
                while True:
                    with lock:
                        item = next(batches, None)
                    if item is None:
                        return
                    size, body = item
                    for attempt in (1, 2):  # a keep-alive connection the server closed: reconnect once
                        try:
                            conn.request("POST", "/api/events/", body=body, headers=headers)
                            response = conn.getresponse()
                            text = response.read()
                            break
                        except (http.client.HTTPException, ConnectionError):
                            conn.close()
                            if attempt == 2:
                                raise
                    if response.status == 201:
                        created[index] += 1
                        accepted[index] += size
                    elif len(errors) < 5:
                        errors.append(f"{response.status}: {text[:300]!r}")
            except Exception as error:  # reported below; the other measurements still count
                errors.append(f"client {index}: {error!r}")
            finally:
                conn.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(API_CLIENTS)]
        gc.collect()
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
    stored = StoredEvent.objects.count() - before
    total = sum(accepted)
    result: dict[str, Any] = {
        "status": "ok",
        "seconds": elapsed,
        "accepted": total,
        "created": sum(created),
        "requests": len(bodies),
        "stored": stored,
    }
    if errors or total != count or stored < total:
        result["status"] = "failed"
        result["reason"] = f"{total} of {count} events got 201, {stored} stored; " + "; ".join(errors[:3])
    return result


# The child: one database, one process.


@contextmanager
def fresh_database(database: str, server: str) -> Iterator[tuple[str, str]]:
    """A new empty database: (DATABASE_URL, psycopg DSN or SQLite path); dropped or removed at the end."""
    if database == "postgres":
        with postgres_database(server, f"bench_store_{os.getpid()}") as url:
            yield url, url
    else:
        with sqlite_file("bench_store_") as path:
            yield f"sqlite:///{path}", path


def child(database: str, count: int, server: str) -> dict[str, Any]:
    with fresh_database(database, server) as (url, target):
        os.environ["DATABASE_URL"] = url
        os.environ["DJANGO_SETTINGS_MODULE"] = "eventbus_project.settings"
        os.environ.setdefault("EVENTS_LOG_LEVEL", "WARNING")
        import django
        from django.core.management import call_command
        from django.db import connection, connections

        django.setup()
        try:
            started = time.perf_counter()
            call_command("migrate", verbosity=0)
            log(database, f"migrated in {time.perf_counter() - started:.1f} s")
            with connection.cursor() as cursor:
                cursor.execute("SELECT version()" if database == "postgres" else "SELECT sqlite_version()")
                server_version = " ".join(str(cursor.fetchone()[0]).split()[:2])
            connection.close()
            # As the server's process is (eventbus_project/asgi.py): what start-up loaded is frozen, out
            # of the collector's sight. Both measurements below run in this same state.
            gc.collect()
            gc.freeze()

            started = time.perf_counter()
            events = build_events(count)
            log(database, f"built {count:,} events in {time.perf_counter() - started:.2f} s (not timed)")

            store = measure_store(database, events)
            connections.close_all()
            log(database, f"store: {count / store['seconds']:,.0f} events/s in {store['batches']} batches")
            settle(database, target)
            if database == "postgres":
                anchor, indexes = measure_copy(target, events)
            else:
                anchor, indexes = measure_executemany(target, events)
            log(database, f"anchor: {count / anchor:,.0f} rows/s")
            settle(database, target)
            api = measure_api(database, count)
            return {
                "database": database,
                "server": server_version if database == "postgres" else f"SQLite {server_version}",
                "events": count,
                "store": store,
                "anchor_seconds": anchor,
                "anchor_indexes": indexes,
                "api": api,
            }
        finally:
            connections.close_all()


# The parent: one child per database, then the figures.


def run_child(database: str, count: int, server: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", "--database", database, "--events", str(count)]
    command += ["--postgres-server", server]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        stdout, _ = process.communicate()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if database == "postgres":
            # The child drops its database in a finally; this catches a child that was killed.
            drop_postgres(server, f"bench_store_{process.pid}")
    result = result_of(stdout)
    if result is not None:
        return result
    raise SystemExit(f"the {database} run failed (exit code {process.returncode}); see above")


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def report(results: dict[str, dict[str, Any]], count: int) -> None:
    anchors = {
        "postgres": "raw psycopg COPY, one transaction (anchor)",
        "sqlite": "raw sqlite3 executemany, one transaction (anchor)",
    }
    rows: list[tuple[str, str, str, str]] = []
    for database, result in results.items():
        store = result["store"]
        rows.append(
            (
                database,
                "this project: bus -> store (+ audit, metrics hooks)",
                f"{rate(count, store['seconds']):,.0f}",
                f"{store['seconds']:.3f}",
            )
        )
        anchor = result["anchor_seconds"]
        rows.append((database, anchors[database], f"{rate(count, anchor):,.0f}", f"{anchor:.3f}"))
        api = result["api"]
        name = f"POST /api/events/, batches of {API_BATCH}, {API_CLIENTS} clients"
        if api["status"] == "skipped":
            rows.append((database, name, SKIPPED_API, ""))
        elif api["status"] == "failed":
            rows.append((database, name, f"failed: {api['reason']}", ""))
        else:
            rows.append(
                (database, name, f"{rate(api['accepted'], api['seconds']):,.0f}", f"{api['seconds']:.3f}")
            )
    width = max(len(row[1]) for row in rows)
    print(f"{'database':<9} {'measurement':<{width}}  {'events/s':>10}  {'time (s)':>8}")
    for database, name, events_per_s, seconds in rows:
        print(f"{database:<9} {name:<{width}}  {events_per_s:>10}  {seconds:>8}".rstrip())
    for database, result in results.items():
        store = result["store"]
        api = result["api"]
        posted = ""
        if api["status"] == "ok":
            posted = f"; the API answered 201 to {api['created']} of {api['requests']} requests"
        print(
            f"{database}: {result['server']}; the store wrote {store['batches']} batches, "
            f"{store['audit_entries']:,} audit entries, {store['metric_rows']} metric counters; "
            f"{result['anchor_indexes']} indexes on the events table and on its copy{posted}"
        )

    ratios: dict[str, str] = {}
    for database, result in results.items():
        ratio = result["anchor_seconds"] / result["store"]["seconds"]
        ratios[database] = f"{ratio:.2f}"
        if database == "postgres":
            print(f"store / COPY, postgres: {ratio:.2f}  (goal >= 0.60)")
        else:
            print(
                f"store / executemany, sqlite: {ratio:.2f}  (goal >= 0.60; SQLite has no COPY, so the "
                "'sqlite=' figure below is against executemany)"
            )
    postgres = ratios.get("postgres", "n/a")
    sqlite = ratios.get("sqlite", "n/a")
    print(f"ratio store/COPY: postgres={postgres} sqlite={sqlite}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--events", type=positive_int, default=100_000, help="events per measurement (100000)"
    )
    parser.add_argument("--database", choices=(*DATABASES, "both"), default="both", help="where (both)")
    parser.add_argument(
        "--postgres-server",
        default=DEFAULT_POSTGRES_SERVER,
        help=f"PostgreSQL server URL, no database; its user may create databases ({DEFAULT_POSTGRES_SERVER})",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    server = args.postgres_server.rstrip("/")

    if args.child:
        if args.database == "both":
            parser.error("--child runs one database")
        result = child(args.database, args.events, server)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return

    databases = DATABASES if args.database == "both" else (args.database,)
    print(
        f"Python {platform.python_version()}, django {version('django')}, psycopg {version('psycopg')}, "
        f"sqlite3 {sqlite3.sqlite_version}; {os.cpu_count()} CPUs; {args.events:,} events per measurement, "
        f"mix: {', '.join(EVENT_MIX)}",
        flush=True,
    )
    started = time.perf_counter()
    results = {database: run_child(database, args.events, server) for database in databases}
    print(f"all runs took {time.perf_counter() - started:.1f} s")
    report(results, args.events)


if __name__ == "__main__":
    main()
