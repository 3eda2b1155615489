"""Time to first byte of the operators' pages at a million stored events, on PostgreSQL, through Daphne.

What is measured, in a new PostgreSQL database (`pages_bench` by default) migrated with `manage.py
migrate` and dropped at the end, seeded with N stored events (default 1,000,000) by one `INSERT ...
SELECT ... FROM generate_series(1, N)` (as benchmarks/export.py: types cycling, sessions, correlations
of 8 events chained by causation, sources, a small jsonb `data`, timestamps 100 ms apart, the newest
now), an audit entry for each event of the approval lifecycle (1/4 of them, with a position, actor,
and a fake hash chain), and a few thousand approval requests (a tenth pending), then ANALYZE:

  For each page, as a staff superuser (a session made by Django's test Client in a child process, its
  cookie sent to Daphne), one untimed request, then the median of `--repeat` requests of the time from
  sending the request to the first byte of the answer (the status line), each on a new connection; the
  body is read to its end before the next request. The anchor is `GET /healthz` on the same server.
  A page that answers 404 is reported as missing (`/`, the overview, may not exist yet) and left out
  of the worst; any other status than 200 stops the run.

Pages: `/`, `/hitl/`, `/events/live/`, `/hitl/requests/<a pending call_id>/`, the admin changelists of
events, audit trail and approval requests, an event's trace page, the events changelist filtered by
type, and searched by a session id.

With `--runs R` the same database is measured R times, each by a new Daphne (a cold process: its
first request untimed as above). Goal: the worst page's median < 200 ms; the last line printed is it.

Run from the repository root:
`.venv/bin/python benchmarks/pages_first_byte.py [--rows N] [--repeat R] [--runs R] [--database NAME]`.
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
import time
from importlib.metadata import version
from typing import Any

from _common import (
    DEFAULT_POSTGRES_SERVER,
    RESULT_PREFIX,
    ROOT,
    daphne,
    log_traceback,
    manage,
    positive_int,
    postgres_database,
    postgres_version,
    result_of,
)

sys.path.insert(0, str(ROOT))

SUPERUSER = "bench-admin"
GOAL_MS = 200.0
APPROVALS = 3_000
TYPES = (
    ("agent_processing_started", "agent"),
    ("tool_execution_requested", "tool"),
    ("tool_approval_required", "hitl"),
    ("hitl_decision_made", "hitl"),
    ("tool_execution_completed", "tool"),
    ("message_added", "session"),
    ("agent_processing_completed", "agent"),
    ("model_changed", "system"),
)
AUDITED = ("tool_approval_required", "hitl_decision_made")
FILTERED_TYPE = "hitl_decision_made"
SOURCES = ("agent-runtime", "orchestrator", "tool-runner", "hitl")


def log(message: str) -> None:
    print(f"[pages] {message}", file=sys.stderr, flush=True)


def sql_array(values: tuple[str, ...]) -> str:
    return "ARRAY[" + ", ".join(f"'{value}'" for value in values) + "]"


# Event i is 100 ms after i - 1; the newest (i = N) is now, so "the last hour" holds 36,000 of them.
EVENTS_SQL = f"""
INSERT INTO events_storedevent (
    position, event_id, event_type, event_category, "timestamp", session_id, correlation_id,
    causation_id, data, source, version, actor, stored_at
)
SELECT
    i,
    md5('bench-' || i)::uuid,
    ({sql_array(tuple(name for name, _ in TYPES))})[1 + i % {len(TYPES)}],
    ({sql_array(tuple(category for _, category in TYPES))})[1 + i % {len(TYPES)}],
    now() - (%(rows)s - i) * interval '100 milliseconds',
    'session-' || (i / 40),
    'corr-' || (i / 8),
    CASE WHEN i % 8 = 0 THEN NULL ELSE md5('bench-' || (i - 1))::uuid::text END,
    jsonb_build_object(
        'agent_type', 'coder', 'tool_name', 'write_file', 'call_id', 'call-' || (i / 8),
        'path', 'src/module_' || (i % 1000) || '.py', 'note', 'say "hi" to Zoë'
    ),
    ({sql_array(SOURCES)})[1 + i % {len(SOURCES)}],
    '1.0',
    CASE WHEN i % 8 = 3 THEN 'operator-' || (i % 5) ELSE NULL END,
    now() - (%(rows)s - i) * interval '100 milliseconds'
FROM generate_series(1, %(rows)s) AS i
"""

AUDIT_SQL = f"""
INSERT INTO audit_auditentry (
    kind, position, event_id, event_type, event_category, "timestamp", session_id, correlation_id,
    actor, data, source, prev_hash, hash
)
SELECT
    'event', position, event_id, event_type, event_category, "timestamp", session_id, correlation_id,
    actor, data, source, md5('prev-' || position) || md5('p2-' || position),
    md5('hash-' || position) || md5('h2-' || position)
FROM events_storedevent
WHERE event_type IN ({", ".join(f"'{name}'" for name in AUDITED)})
ORDER BY position
"""

# A tenth pending (expiring over the next hour), the rest decided.
APPROVALS_SQL = f"""
INSERT INTO hitl_approvalrequest (
    call_id, session_id, correlation_id, agent, tool_name, arguments, modified_args, args_hash, reason,
    status, decided_by_username, channel, comment, created_at, decided_at, expires_at, on_expire,
    rule, args_sha256, approvals_required, approvals, approver_group, escalate_to_group, escalate_at,
    escalated_at, requested_by_id, decided_by_id
)
SELECT
    'bench-call-' || i, 'session-' || i, 'corr-' || i, 'coder', 'write_file',
    jsonb_build_object('path', 'src/module_' || i || '.py', 'content', repeat('x', 200)), NULL,
    md5('args-' || i) || md5('a2-' || i), 'writes a file',
    CASE WHEN i % 10 = 0 THEN 'pending' WHEN i % 3 = 0 THEN 'rejected' ELSE 'approved' END,
    CASE WHEN i % 10 = 0 THEN '' ELSE 'operator-1' END,
    CASE WHEN i % 10 = 0 THEN '' ELSE 'admin' END,
    '', now() - i * interval '10 seconds',
    CASE WHEN i % 10 = 0 THEN NULL ELSE now() - i * interval '10 seconds' + interval '5 seconds' END,
    CASE WHEN i % 10 = 0 THEN now() + (i % 3600) * interval '1 second'
         ELSE now() - i * interval '10 seconds' + interval '300 seconds' END,
    'reject', '', md5('sha-' || i) || md5('s2-' || i), 1, '[]'::jsonb, NULL, NULL, NULL, NULL, NULL, NULL
FROM generate_series(1, {APPROVALS}) AS i
"""


def seed(url: str, rows: int) -> dict[str, Any]:
    """The events, their audit entries and the approval requests, the writers' counter, then ANALYZE."""
    import psycopg

    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.transaction():
            conn.execute(EVENTS_SQL.replace("%(rows)s", str(int(rows))))
            conn.execute(
                "INSERT INTO events_positioncounter (id, value) VALUES (1, %s) "
                "ON CONFLICT (id) DO UPDATE SET value = EXCLUDED.value",
                (rows,),
            )
            audited = conn.execute(AUDIT_SQL).rowcount
            approvals = conn.execute(APPROVALS_SQL).rowcount
        for table in ("events_storedevent", "audit_auditentry", "hitl_approvalrequest"):
            conn.execute(f"ANALYZE {table}")
    return {"seed_s": time.perf_counter() - started, "audited": audited, "approvals": approvals}


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
    return {
        "cookie_name": settings.SESSION_COOKIE_NAME,
        "cookie": client.cookies[settings.SESSION_COOKIE_NAME].value,
    }


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


def pages(url: str, rows: int) -> list[tuple[str, str]]:
    """(name, path) of each page measured, the ids in them taken from the seeded database."""
    import psycopg

    with psycopg.connect(url) as conn:
        call = conn.execute(
            "SELECT call_id FROM hitl_approvalrequest WHERE status = 'pending' "
            "ORDER BY created_at DESC LIMIT 1"
        ).fetchone()
    middle = rows // 2 // 8 * 8 + 5  # the deepest event of a correlation of 8 in the middle of the store
    return [
        ("overview /", "/"),
        ("approval page /hitl/", "/hitl/"),
        ("live feed /events/live/", "/events/live/"),
        ("request page /hitl/requests/<id>/", f"/hitl/requests/{call[0] if call else 'none'}/"),
        ("admin events", "/admin/events/storedevent/"),
        ("admin audit trail", "/admin/audit/auditentry/"),
        ("admin approval requests", "/admin/hitl/approvalrequest/"),
        ("admin trace of an event", f"/admin/events/storedevent/{middle}/trace/"),
        ("admin events filtered by type", f"/admin/events/storedevent/?event_type={FILTERED_TYPE}"),
        ("admin events searched by session", f"/admin/events/storedevent/?q=session-{rows // 80}"),
    ]


def first_byte(port: int, path: str, headers: dict[str, str]) -> tuple[int, float, int]:
    """The status, the seconds to the first byte of the answer, and the body's size."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        started = time.perf_counter()
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()  # returns once the status line has arrived
        elapsed = time.perf_counter() - started
        return response.status, elapsed, len(response.read())
    finally:
        conn.close()


def measure(port: int, path: str, headers: dict[str, str], repeat: int) -> dict[str, Any]:
    status, _, _ = first_byte(port, path, headers)  # untimed
    if status == 404:
        return {"missing": True}
    if status != 200:
        raise RuntimeError(f"GET {path} answered {status}")
    times = []
    size = 0
    for _ in range(repeat):
        status, elapsed, size = first_byte(port, path, headers)
        if status != 200:
            raise RuntimeError(f"GET {path} answered {status}")
        times.append(elapsed * 1000)
    return {"median_ms": statistics.median(times), "max_ms": max(times), "bytes": size}


def run(server: str, database: str, rows: int, repeat: int, runs: int) -> list[dict[str, Any]]:
    results = []
    with postgres_database(server, database) as url:
        env = dict(os.environ, DATABASE_URL=url, EVENTS_LOG_LEVEL="WARNING")
        env.pop("REDIS_URL", None)  # one server process: the in-memory channel layer is enough
        started = time.perf_counter()
        manage(env, "migrate", "--noinput", "-v0", timeout_s=300)
        log(f"migrated in {time.perf_counter() - started:.1f} s")
        seeded = seed(url, rows)
        log(
            f"seeded {rows:,} events, {seeded['audited']:,} audit entries, {seeded['approvals']:,} approval "
            f"requests in {seeded['seed_s']:.1f} s"
        )
        session = run_session_child(env)
        cookie = {"Cookie": f"{session['cookie_name']}={session['cookie']}"}
        measured = pages(url, rows)
        for number in range(1, runs + 1):
            with daphne(env, log, probe_timeout_s=60, check_output=log_traceback) as (port, _pid):
                result: dict[str, Any] = {"healthz": measure(port, "/healthz", {}, repeat), "pages": {}}
                for name, path in measured:
                    result["pages"][name] = {"path": path, **measure(port, path, cookie, repeat)}
            results.append(result)
            report_run(number, result)
    return results


def report_run(number: int, result: dict[str, Any]) -> None:
    print(f"run {number}: anchor GET /healthz median {result['healthz']['median_ms']:.1f} ms", flush=True)
    for name, page in result["pages"].items():
        if page.get("missing"):
            print(f"  {name}: missing (404)")
        else:
            print(
                f"  {name}: median {page['median_ms']:.1f} ms (max {page['max_ms']:.1f} ms, "
                f"{page['bytes'] / 1024:.0f} KB)"
            )


def worst(result: dict[str, Any]) -> tuple[str, float]:
    shown = [(name, page["median_ms"]) for name, page in result["pages"].items() if not page.get("missing")]
    return max(shown, key=lambda item: item[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=positive_int, default=1_000_000, help="events seeded (1,000,000)")
    parser.add_argument("--repeat", type=positive_int, default=7, help="timed requests per page (7)")
    parser.add_argument("--runs", type=positive_int, default=1, help="measurements, each by a new Daphne (1)")
    parser.add_argument(
        "--database", default="pages_bench", help="the database made and dropped (pages_bench)"
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
    print(
        f"Python {platform.python_version()}, django {version('django')}, daphne {version('daphne')}, "
        f"psycopg {version('psycopg')}, {postgres_version(server)}; {os.cpu_count()} CPUs; "
        f"{args.rows:,} events; median of {args.repeat} per page",
        flush=True,
    )
    started = time.perf_counter()
    results = run(server, args.database, args.rows, args.repeat, args.runs)
    print(f"all runs took {time.perf_counter() - started:.1f} s")
    worst_pages = [worst(result) for result in results]
    name, median = max(worst_pages, key=lambda item: item[1])
    met = "met" if median < GOAL_MS else "MISSED"
    print(f"worst page median: {median:.1f} ms ({name}; goal < {GOAL_MS:.0f} ms): {met}")


if __name__ == "__main__":
    main()
