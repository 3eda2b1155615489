"""Export of a million stored events: `/api/audit/export/?format=csv` over HTTP against PostgreSQL's own
`COPY ... TO STDOUT WITH CSV` of the same rows, the server's peak memory, and two pages at that size.

What is measured, in a new PostgreSQL database `bench_export_<pid>` migrated with `manage.py migrate`
and dropped at the end, seeded with N stored events (default 1,000,000) by one `INSERT ... SELECT ...
FROM generate_series(1, N)` (types, categories, sessions, correlations and sources cycling, a few
nulls, a small jsonb `data` with a quote and a non-ASCII letter, timestamps 100 ms apart, some with
microseconds), then ANALYZE:

  1. Over HTTP against a running Daphne (`python -m daphne ... eventbus_project.asgi:application`), an
     auditor's token (`manage.py create_api_token NAME --group auditors`): `GET /api/audit/export/
     ?format=csv` on one `http.client` connection, the whole body read (1 MiB reads) and its lines and
     bytes counted; rows/s from the request sent to the last byte. Meanwhile a thread samples Daphne's
     VmRSS (/proc/PID/status) every 50 ms: the peak, beside the idle RSS just before.
  2. `COPY (SELECT <the export's columns> FROM events_storedevent ORDER BY position) TO STDOUT WITH CSV`
     with psycopg, every block read and counted; once before the export and once after, the faster
     counts (the table is then as warm for COPY as for the export).
  3. At that size, the median of a few requests (after one untimed) of: the admin's changelist
     `/admin/events/storedevent/` as a superuser (a session made by Django's test Client in a child
     process, its cookie sent to Daphne), and `/api/events/?event_type=...&limit=100` (the auditor).

With `--profile FILE`, py-spy records Daphne during the export (`py-spy record --pid`: a flame graph, or
by its extension speedscope (.json) or collapsed stacks (.txt); the export then runs slower and its
figures are not the goal's).

Goals (the export issue, then the ingestion issue): the export at least 0.3 of COPY's rate, under
130 MB peak RSS for the server. Measured on this kind of machine (2 cores): COPY about 400k rows/s.
The last line printed is the ratio export/COPY.

Run from the repository root:
`.venv/bin/python benchmarks/export.py [--rows N] [--repeat R] [--profile FILE]`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from importlib.metadata import version
from typing import Any

from _common import (
    DEFAULT_POSTGRES_SERVER,
    RESULT_PREFIX,
    ROOT,
    api_token,
    daphne,
    log_traceback,
    manage,
    positive_int,
    postgres_database,
    postgres_version,
    proc_status,
    result_of,
    start_profiler,
    stop_profiler,
)

sys.path.insert(0, str(ROOT))

AUDITOR = "bench-auditor"
SUPERUSER = "bench-admin"
RSS_INTERVAL_S = 0.05
READ_SIZE = 1 << 20
MB = 1024 * 1024
GOAL_RATIO = 0.3
GOAL_RSS_MB = 130
# The export's columns (the contract's keys, then position), in its order.
COLUMNS = (
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
    "position",
)
# Event types with their categories, cycled by the seed.
TYPES = (
    ("agent_processing_started", "agent"),
    ("agent_processing_completed", "agent"),
    ("tool_execution_requested", "tool"),
    ("tool_execution_completed", "tool"),
    ("message_added", "session"),
    ("tool_approval_required", "hitl"),
    ("hitl_decision_made", "hitl"),
    ("model_changed", "system"),
)
FILTERED_TYPE = "hitl_decision_made"
SOURCES = ("agent-runtime", "orchestrator", "tool-runner", "operator-console")


def log(message: str) -> None:
    print(f"[export] {message}", file=sys.stderr, flush=True)


def sql_array(values: tuple[str, ...]) -> str:
    return "ARRAY[" + ", ".join(f"'{value}'" for value in values) + "]"


SEED_SQL = f"""
INSERT INTO events_storedevent (
    position, event_id, event_type, event_category, "timestamp", session_id, correlation_id,
    causation_id, data, source, version, actor, stored_at
)
SELECT
    i,
    md5('bench-' || i)::uuid,
    ({sql_array(tuple(name for name, _ in TYPES))})[1 + i % {len(TYPES)}],
    ({sql_array(tuple(category for _, category in TYPES))})[1 + i % {len(TYPES)}],
    timestamptz '2025-01-01 00:00:00+00' + i * interval '100 milliseconds'
        + CASE WHEN i % 3 = 0 THEN (i % 997) * interval '1 microsecond' ELSE interval '0' END,
    CASE WHEN i % 50 = 0 THEN NULL ELSE 'session-' || (i % 5000) END,
    CASE WHEN i % 7 = 0 THEN NULL ELSE 'corr-' || (i / 8) END,
    CASE WHEN i % 8 = 0 THEN NULL ELSE md5('bench-' || (i - 1))::uuid::text END,
    jsonb_build_object(
        'agent', 'coder', 'tool', 'write_file', 'step', i % 100, 'ok', i % 2 = 0,
        'path', 'src/module_' || (i % 1000) || '.py', 'note', 'say "hi" to Zoë'
    ),
    ({sql_array(SOURCES)})[1 + i % {len(SOURCES)}],
    '1.0',
    NULL,
    timestamptz '2025-01-01 00:00:00+00' + i * interval '100 milliseconds'
FROM generate_series(1, %s) AS i
"""


# The session child: a superuser signed in, through Django's test Client, on the benchmark database.


def session_child() -> dict[str, Any]:
    import django

    os.environ["DJANGO_SETTINGS_MODULE"] = "eventbus_project.settings"
    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.test import Client

    user_model = get_user_model()
    user = user_model.objects.filter(username=SUPERUSER).first()
    if user is None:
        user = user_model.objects.create_superuser(SUPERUSER, "bench@example.com", "bench-password-1")
    client = Client()
    client.force_login(user)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    return {"cookie_name": settings.SESSION_COOKIE_NAME, "cookie": cookie}


def run_session_child(env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--session-child"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    result = result_of(done.stdout)
    if result is not None:
        return result
    raise SystemExit(f"the session child failed ({done.returncode}): {done.stderr[-2000:]}")


# Helpers of the parent: the server's memory, HTTP, the database.


class RssSampler:
    """The peak VmRSS of a process, sampled every RSS_INTERVAL_S in a thread while in the `with` block."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kb = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, proc_status(self.pid, "VmRSS"))
            self.samples += 1
            self._stop.wait(RSS_INTERVAL_S)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, proc_status(self.pid, "VmRSS"))


def get(port: int, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def seed(url: str, rows: int) -> float:
    """N stored events in one INSERT ... SELECT, the writers' counter after them, then ANALYZE."""
    import psycopg

    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.transaction():
            conn.execute(SEED_SQL.replace("%s", str(int(rows))))
            conn.execute(
                "INSERT INTO events_positioncounter (id, value) VALUES (1, %s) "
                "ON CONFLICT (id) DO UPDATE SET value = EXCLUDED.value",
                (rows,),
            )
        conn.execute("ANALYZE events_storedevent")
    return time.perf_counter() - started


# The measures.


def measure_export(port: int, pid: int, token: str, profile: str | None) -> dict[str, Any]:
    idle_kb = proc_status(pid, "VmRSS")
    spy = start_profiler(pid, profile) if profile else None
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    size = lines = 0
    try:
        with RssSampler(pid) as sampler:
            started = time.perf_counter()
            conn.request("GET", "/api/audit/export/?format=csv", headers={"Authorization": f"Bearer {token}"})
            response = conn.getresponse()
            first_byte = time.perf_counter() - started
            if response.status != 200:
                raise RuntimeError(f"the export answered {response.status}: {response.read()[:2000]!r}")
            last = b""
            while True:
                block = response.read1(READ_SIZE)
                if not block:
                    break
                size += len(block)
                lines += block.count(b"\n")
                last = block
            elapsed = time.perf_counter() - started
        if last and not last.endswith(b"\n"):
            raise RuntimeError("the export does not end with a line break")
    finally:
        conn.close()
        if spy is not None:
            stop_profiler(spy, log, 500)
    return {
        "rows": lines - 1,  # the header
        "bytes": size,
        "seconds": elapsed,
        "first_byte_s": first_byte,
        "idle_rss_kb": idle_kb,
        "peak_rss_kb": sampler.peak_kb,
        "hwm_kb": proc_status(pid, "VmHWM"),
        "samples": sampler.samples,
    }


SLOW_READ_BYTES = 64 * 1024  # the slow reader takes this much...
SLOW_READ_PAUSE_S = 0.1  # ...then pauses this long: 640 KB/s, a 314 MB export would take 8 minutes
SLOW_READ_FOR_S = 15.0


def measure_slow_reader(port: int, pid: int, token: str) -> dict[str, Any]:
    """The same export read slowly, with a small receive buffer, for SLOW_READ_FOR_S, then dropped: a
    server that does not wait for its reader would buffer the export in memory meanwhile."""
    import socket

    idle_kb = proc_status(pid, "VmRSS")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_READ_BYTES)
    sock.settimeout(30)
    received = 0
    try:
        with RssSampler(pid) as sampler:
            sock.connect(("127.0.0.1", port))
            sock.sendall(
                b"GET /api/audit/export/?format=csv HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                + f"Authorization: Bearer {token}\r\n\r\n".encode()
            )
            started = time.perf_counter()
            while time.perf_counter() - started < SLOW_READ_FOR_S:
                block = sock.recv(SLOW_READ_BYTES)
                if not block:
                    break
                received += len(block)
                time.sleep(SLOW_READ_PAUSE_S)
    finally:
        sock.close()
    time.sleep(1.0)  # the server notices the closed socket and stops
    return {
        "bytes": received,
        "idle_rss_kb": idle_kb,
        "peak_rss_kb": sampler.peak_kb,
        "after_rss_kb": proc_status(pid, "VmRSS"),
    }


def measure_copy(url: str) -> dict[str, Any]:
    import psycopg

    columns = ", ".join(f'"{column}"' for column in COLUMNS)
    query = f"COPY (SELECT {columns} FROM events_storedevent ORDER BY position) TO STDOUT WITH CSV"
    size = lines = 0
    with psycopg.connect(url) as conn, conn.cursor() as cursor:
        started = time.perf_counter()
        with cursor.copy(query) as copy:
            for block in copy:
                size += len(block)
                lines += bytes(block).count(b"\n")
        elapsed = time.perf_counter() - started
    return {"rows": lines, "bytes": size, "seconds": elapsed}


def median_ms(port: int, path: str, headers: dict[str, str], repeat: int, check: bytes) -> dict[str, Any]:
    status, body = get(port, path, headers)  # untimed
    if status != 200 or check not in body:
        raise RuntimeError(f"GET {path} answered {status}: {body[:500]!r}")
    durations = []
    for _ in range(repeat):
        started = time.perf_counter()
        status, body = get(port, path, headers)
        durations.append(time.perf_counter() - started)
        if status != 200:
            raise RuntimeError(f"GET {path} answered {status}")
    return {
        "median_ms": statistics.median(durations) * 1000,
        "max_ms": max(durations) * 1000,
        "bytes": len(body),
    }


def run(server: str, rows: int, repeat: int, profile: str | None) -> dict[str, Any]:
    results: dict[str, Any] = {"rows_seeded": rows}
    with postgres_database(server, f"bench_export_{os.getpid()}") as url:
        env = dict(os.environ, DATABASE_URL=url, EVENTS_LOG_LEVEL="WARNING")
        env.pop("REDIS_URL", None)  # one server process: the in-memory channel layer is enough
        started = time.perf_counter()
        manage(env, "migrate", "--noinput", "-v0")
        log(f"migrated in {time.perf_counter() - started:.1f} s")
        results["seed_s"] = seed(url, rows)
        log(f"seeded {rows:,} events in {results['seed_s']:.1f} s")
        token = api_token(env, AUDITOR, "auditors")
        session = run_session_child(env)

        copies = [measure_copy(url)]
        log(f"COPY: {copies[0]['rows']:,} rows in {copies[0]['seconds']:.2f} s")
        with daphne(env, log, probe_timeout_s=60, check_output=log_traceback) as (port, pid):
            log(f"daphne up on port {port}, pid {pid}")
            results["export"] = measure_export(port, pid, token, profile)
            log(f"export: {results['export']['rows']:,} rows in {results['export']['seconds']:.2f} s")
            results["slow"] = measure_slow_reader(port, pid, token)
            log(f"slow reader: {results['slow']['bytes'] / MB:.1f} MB in {SLOW_READ_FOR_S:g} s")
            cookie = {"Cookie": f"{session['cookie_name']}={session['cookie']}"}
            results["admin"] = median_ms(port, "/admin/events/storedevent/", cookie, repeat, b"result_list")
            bearer = {"Authorization": f"Bearer {token}"}
            results["api"] = median_ms(
                port,
                f"/api/events/?event_type={FILTERED_TYPE}&limit=100",
                bearer,
                repeat,
                FILTERED_TYPE.encode(),
            )
        copies.append(measure_copy(url))
        log(f"COPY again: {copies[1]['rows']:,} rows in {copies[1]['seconds']:.2f} s")
        results["copy"] = min(copies, key=lambda copy: copy["seconds"])
        results["copy_all_s"] = [copy["seconds"] for copy in copies]
    return results


def report(results: dict[str, Any]) -> float:
    export, copy = results["export"], results["copy"]
    export_rate = export["rows"] / export["seconds"]
    copy_rate = copy["rows"] / copy["seconds"]
    # The sampled peak, or VmHWM when higher (a spike between two samples; idle is far below it).
    peak_mb = max(export["peak_rss_kb"], export["hwm_kb"]) / 1024
    print(
        f"seeded {results['rows_seeded']:,} events in {results['seed_s']:.1f} s (with ANALYZE; "
        f"{copy['rows'] - results['rows_seeded']} more stored by the set-up: token, sign-in)"
    )
    if export["rows"] != copy["rows"]:
        print(f"  WARNING: the export has {export['rows']:,} rows, COPY {copy['rows']:,}")
    print(
        f"export GET /api/audit/export/?format=csv: {export['rows']:,} rows, "
        f"{export['bytes'] / MB:.1f} MB in "
        f"{export['seconds']:.2f} s (first byte {export['first_byte_s'] * 1000:.0f} ms): "
        f"{export_rate:,.0f} rows/s, {export['bytes'] / MB / export['seconds']:.1f} MB/s"
    )
    copies = ", ".join(f"{seconds:.2f}" for seconds in results["copy_all_s"])
    print(
        f"COPY (SELECT ...) TO STDOUT WITH CSV: {copy['rows']:,} rows, {copy['bytes'] / MB:.1f} MB in "
        f"{copy['seconds']:.2f} s (the faster of {copies} s): {copy_rate:,.0f} rows/s"
    )
    print(
        f"Daphne RSS: idle {export['idle_rss_kb'] / 1024:.1f} MB, peak during the export {peak_mb:.1f} MB "
        f"(sampled {export['peak_rss_kb'] / 1024:.1f} MB, {export['samples']} samples every "
        f"{RSS_INTERVAL_S * 1000:.0f} ms; VmHWM {export['hwm_kb'] / 1024:.1f} MB)"
    )
    slow = results["slow"]
    slow_peak_mb = slow["peak_rss_kb"] / 1024
    print(
        f"slow reader ({SLOW_READ_BYTES // 1024} KB every {SLOW_READ_PAUSE_S * 1000:.0f} ms for "
        f"{SLOW_READ_FOR_S:g} s, then gone): {slow['bytes'] / MB:.1f} MB read; Daphne RSS idle "
        f"{slow['idle_rss_kb'] / 1024:.1f} MB, peak {slow_peak_mb:.1f} MB, 1 s after "
        f"{slow['after_rss_kb'] / 1024:.1f} MB"
    )
    peak_mb = max(peak_mb, slow_peak_mb)
    admin, api = results["admin"], results["api"]
    print(
        f"admin changelist /admin/events/storedevent/: median {admin['median_ms']:.1f} ms "
        f"(max {admin['max_ms']:.1f} ms, {admin['bytes'] / 1024:.0f} KB)"
    )
    print(
        f"filtered API /api/events/?event_type={FILTERED_TYPE}&limit=100: median {api['median_ms']:.1f} ms "
        f"(max {api['max_ms']:.1f} ms, {api['bytes'] / 1024:.0f} KB)"
    )
    ratio = export_rate / copy_rate
    print("goals:")
    print(f"  export/COPY {ratio:.2f} (goal >= {GOAL_RATIO}): {'met' if ratio >= GOAL_RATIO else 'MISSED'}")
    rss_met = "met" if peak_mb < GOAL_RSS_MB else "MISSED"
    print(f"  peak RSS {peak_mb:.1f} MB (goal < {GOAL_RSS_MB} MB): {rss_met}")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=positive_int, default=1_000_000, help="events seeded (1,000,000)")
    parser.add_argument("--repeat", type=positive_int, default=5, help="timed requests per page (5)")
    parser.add_argument(
        "--profile", help="py-spy's output file (.svg; .json: speedscope; .txt: collapsed stacks)"
    )
    parser.add_argument(
        "--postgres-server",
        default=DEFAULT_POSTGRES_SERVER,
        help=f"PostgreSQL server URL, no database; its user may create databases ({DEFAULT_POSTGRES_SERVER})",
    )
    parser.add_argument("--session-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.session_child:  # DATABASE_URL is set by the parent
        print(RESULT_PREFIX + json.dumps(session_child()), flush=True)
        return

    server = args.postgres_server.rstrip("/")
    pg_version = postgres_version(server)
    print(
        f"Python {platform.python_version()}, django {version('django')}, daphne {version('daphne')}, "
        f"psycopg {version('psycopg')}, {pg_version}; {os.cpu_count()} CPUs; {args.rows:,} events",
        flush=True,
    )
    started = time.perf_counter()
    results = run(server, args.rows, args.repeat, args.profile)
    print(f"all runs took {time.perf_counter() - started:.1f} s")
    ratio = report(results)
    print(f"ratio export/COPY: {ratio:.2f}")


if __name__ == "__main__":
    main()
