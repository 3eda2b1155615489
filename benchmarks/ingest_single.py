"""Single-event ingest: `POST /api/events/` with ONE event per request under wrk, against a bare ASGI app
served by the same Daphne, in one run (issue 15, measurement only).

Set-up, thrown away at the end: a fresh VAR_DIR in a temporary folder, a fresh database (`--database
sqlite`: VAR_DIR/db.sqlite3; `postgres`: a new `bench_single_<pid>` database on --postgres-server),
`manage.py migrate`, an agent's token and an auditor's (`manage.py create_api_token NAME --group
agents|auditors`). Daphne runs with DEBUG=false and SECURE_SSL_REDIRECT=false.

  A. app: `python -m daphne eventbus_project.asgi:application`; 20 sequential warm-up POSTs (session
     `warmup`), then `wrk -t 2 -c 32 -d 15s --latency --timeout 10s -s <script>`: every request a POST
     of one event, `{"event_id": "<uuid>", "event_type": "message_added", "session_id": "bench-<n>",
     "data": {"role": "assistant", "content": "hello"}}`, with `Authorization: Bearer <token>` and
     `Content-Type: application/json`. The event_id is built in wrk's Lua per request, UUID4-shaped and
     unique by construction (a run prefix, the wrk thread's number and a per-thread counter, plus
     random bits), so no request is an idempotent no-op; n cycles over 32 sessions.
  B. bare: a second Daphne (same command, same flags) serving benchmarks._bare_asgi:application (reads
     the body, decodes it, answers 201 with a small JSON); the same warm-up and the same wrk load.

Figures, for both: requests/s (wrk's completed responses / its duration), p50 and p99 latency (wrk's
--latency percentiles), non-2xx responses (wrk's "Non-2xx or 3xx", i.e. status > 399, plus a count of
201s and of every status seen, from the Lua `response()` callback), socket errors, and Daphne's CPU
time (user + system, /proc) during the load, per request. For the app also the store writer's batches
during the load (`GET /api/stats/` as the auditor, before and after: events per commit) and a check:
after Daphne has stopped (SIGTERM drains the bus and commits the store), the events of sessions
`bench-%` counted directly in the database (sqlite3 on the file, psycopg on the URL) must equal the
201s wrk saw, give or take the requests in flight when wrk stopped (at most one per connection: a
request whose client hung up is still committed, the publish is shielded): 0 <= stored - 201s <=
connections, else the run is marked FAILED (and exits 1).

The last line printed is the ratio app/bare of requests/s. Before it, one `BENCH-RESULT {json}` line
(benchmarks._common.RESULT_PREFIX) with every figure, for scripts that collect runs.

With `--profile FILE`, py-spy records the app's Daphne for --profile-seconds (10) from 2 s into the
load (`py-spy record --pid <daphne> --threads --nonblocking --rate 100`; .txt: collapsed stacks
(`--format raw`), .json: speedscope, else a flame graph SVG); `--profile-gil` records only the thread
holding the GIL (`--gil`): where the CPU goes rather than who waits. The figures of such a run are not
comparable. benchmarks/profile_summary.py sums collapsed stacks by function.

Figures known before this script (one event per POST, SQLite): about 93 requests/s, p50 325 ms, p99
571 ms; bare about 2,744/s, ratio 0.034; PostgreSQL about 75/s.

Run from the repository root (under 2 minutes with the defaults):
`.venv/bin/python benchmarks/ingest_single.py [--database sqlite|postgres] [--duration 15s]
[--connections 32] [--threads 2] [--profile FILE]`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from _common import (
    DEFAULT_POSTGRES_SERVER,
    RESULT_PREFIX,
    api_token,
    cpu_seconds,
    daphne,
    log_traceback,
    manage,
    positive_int,
    postgres_database,
    py_spy_path,
)

WRK = "/usr/bin/wrk"
BARE_APP = "benchmarks._bare_asgi:application"
AGENT, AUDITOR = "bench-single-agent", "bench-single-auditor"
WARMUP_POSTS = 20
SESSIONS = 32
PROFILE_DELAY_S = 2.0

# wrk's Lua (LuaJIT). setup() runs in the main state once per thread, init() and request()/response() in
# each thread's state, done() in the main state again: the per-thread counters are read back there.
LUA_TEMPLATE = r"""
local token = "@TOKEN@"
local run_prefix = "@RUN@"
local sessions = @SESSIONS@
local threads = {}
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("tid", thread_count)
  table.insert(threads, thread)
end

function init(args)
  counter = 0
  n201 = 0
  statuses = {}
  math.randomseed(os.time() * 1000 + tid * 7919)
  headers = {}
  headers["Authorization"] = "Bearer " .. token
  headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local event_id = string.format("%s-%04x-4%03x-%04x-%012x",
    run_prefix, tid, math.random(0, 4095), 32768 + math.random(0, 16383), counter)
  local body = '{"event_id": "' .. event_id .. '", "event_type": "message_added", "session_id": "bench-'
    .. ((counter * 2 + tid) % sessions) .. '", "data": {"role": "assistant", "content": "hello"}}'
  return wrk.format("POST", "/api/events/", headers, body)
end

function response(status, headers, body)
  if status == 201 then
    n201 = n201 + 1
  end
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local created = 0
  local seen = {}
  for _, thread in ipairs(threads) do
    created = created + thread:get("n201")
    local st = thread:get("statuses")
    for code, count in pairs(st) do
      local key = tostring(code)
      seen[key] = (seen[key] or 0) + count
    end
  end
  local parts = {}
  for code, count in pairs(seen) do
    table.insert(parts, string.format('"%s": %d', code, count))
  end
  local e = summary.errors
  io.write(string.format(
    'WRK-JSON {"requests": %d, "duration_us": %d, "bytes": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, '
    .. '"max_us": %d, "mean_us": %.1f, "non_2xx_3xx": %d, "connect_errors": %d, "read_errors": %d, '
    .. '"write_errors": %d, "timeouts": %d, "created_201": %d, "statuses": {%s}}\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, e.status, e.connect, e.read, e.write, e.timeout,
    created, table.concat(parts, ", ")))
end
"""


def log(message: str) -> None:
    print(f"[ingest_single] {message}", file=sys.stderr, flush=True)


def lua_script(directory: str, token: str) -> str:
    """The wrk script for this run, written into `directory`: its path."""
    run = secrets.token_hex(4)  # the event_ids' first 8 hex digits: distinct between runs
    text = LUA_TEMPLATE.replace("@TOKEN@", token).replace("@RUN@", run).replace("@SESSIONS@", str(SESSIONS))
    path = os.path.join(directory, "ingest_single.lua")
    Path(path).write_text(text)
    return path


def post_event(conn: http.client.HTTPConnection, token: str, session: str) -> tuple[int, bytes]:
    """One POST of one event with a fresh event_id: (status, body)."""
    import uuid

    body = json.dumps(
        {
            "event_id": str(uuid.uuid4()),
            "event_type": "message_added",
            "session_id": session,
            "data": {"role": "assistant", "content": "hello"},
        }
    ).encode()
    conn.request(
        "POST",
        "/api/events/",
        body=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    response = conn.getresponse()
    return response.status, response.read()


def warm_up(port: int, token: str) -> None:
    """WARMUP_POSTS sequential POSTs on one keep-alive connection; each must be a 201."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for _ in range(WARMUP_POSTS):
            status, body = post_event(conn, token, "warmup")
            if status != 201:
                raise RuntimeError(f"warm-up POST answered {status}: {body[:300]!r}")
    finally:
        conn.close()


def store_stats(port: int, token: str) -> dict[str, Any]:
    """The store writer's counters of the answering process (`GET /api/stats/`, `store`)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/api/stats/", headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET /api/stats/ answered {response.status}: {body[:300]!r}")
        stats: dict[str, Any] = json.loads(body)["store"]
        return stats
    finally:
        conn.close()


def start_py_spy(pid: int, output: str, seconds: float, gil: bool) -> subprocess.Popen[bytes]:
    """py-spy recording `pid` for `seconds` into `output` (format from its suffix)."""
    fmt = {".json": "speedscope", ".txt": "raw"}.get(Path(output).suffix, "flamegraph")
    command = [py_spy_path(), "record", "--pid", str(pid), "--output", output, "--format", fmt]
    command += ["--threads", "--nonblocking", "--rate", "100", "--duration", str(max(1, round(seconds)))]
    if gil:
        command.append("--gil")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def run_wrk(
    port: int,
    script: str,
    args: argparse.Namespace,
    *,
    server_pid: int,
    profile_pid: int | None = None,
) -> dict[str, Any]:
    """The wrk load against `port`: the figures of its done() callback, with its summary text."""
    command = [WRK, "-t", str(args.threads), "-c", str(args.connections), "-d", args.duration]
    command += ["--latency", "--timeout", "10s", "-s", script, f"http://127.0.0.1:{port}/api/events/"]
    cpu_before = cpu_seconds(server_pid)
    wrk = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    spy = None
    if profile_pid is not None:
        time.sleep(PROFILE_DELAY_S)
        spy = start_py_spy(profile_pid, args.profile, args.profile_seconds, args.profile_gil)
    out, err = wrk.communicate(timeout=600)
    cpu_used = cpu_seconds(server_pid) - cpu_before
    if spy is not None:
        try:
            _, spy_err = spy.communicate(timeout=60)
            log(f"py-spy: {spy_err.decode(errors='replace').strip()[-400:]}")
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()
            log("py-spy did not finish; killed")
    if wrk.returncode != 0:
        raise RuntimeError(f"wrk failed ({wrk.returncode}): {err[-2000:]}")
    figures: dict[str, Any] | None = None
    for line in out.splitlines():
        if line.startswith("WRK-JSON "):
            figures = json.loads(line[len("WRK-JSON ") :])
    if figures is None:
        raise RuntimeError(f"wrk printed no figures: {out[-2000:]} {err[-2000:]}")
    # wrk's own summary, for the record: it must agree with the callback's.
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    figures["wrk_requests_per_s"] = float(match.group(1)) if match else None
    figures["requests_per_s"] = figures["requests"] / (figures["duration_us"] / 1e6)
    figures["server_cpu_s"] = cpu_used
    figures["server_cpu_ms_per_request"] = 1000 * cpu_used / max(1, figures["requests"])
    figures["socket_errors"] = sum(
        figures[key] for key in ("connect_errors", "read_errors", "write_errors", "timeouts")
    )
    figures["summary"] = out
    return figures


def count_stored(database: str, where: str) -> int:
    """Events of sessions `bench-%` in the database (a SQLite path or a PostgreSQL URL), counted directly."""
    query = "SELECT COUNT(*) FROM events_storedevent WHERE session_id LIKE 'bench-%'"
    if database == "sqlite":
        conn = sqlite3.connect(where)
        try:
            return int(conn.execute(query).fetchone()[0])
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(where) as pg:
        row = pg.execute(query).fetchone()
        return int(row[0]) if row else 0


def check_daphne_output(path: str, log_fn: Any) -> None:
    log_traceback(path, log_fn)


@contextmanager
def fresh_database(args: argparse.Namespace, home: str) -> Any:
    """(DATABASE_URL, what count_stored connects to) of a new database; dropped at the end."""
    if args.database == "postgres":
        with postgres_database(args.postgres_server, f"bench_single_{os.getpid()}") as url:
            yield url, url
    else:
        path = os.path.join(home, "db.sqlite3")
        with nullcontext():
            yield f"sqlite:///{path}", path


def fmt_line(name: str, f: dict[str, Any]) -> str:
    return (
        f"{name}: {f['requests_per_s']:,.1f} requests/s ({f['requests']} in {f['duration_us'] / 1e6:.2f} s), "
        f"p50 {f['p50_us'] / 1000:.1f} ms, p99 {f['p99_us'] / 1000:.1f} ms, max {f['max_us'] / 1000:.1f} ms, "
        f"non-2xx {f['non_2xx_3xx']}, socket errors {f['socket_errors']}, statuses {f['statuses']}; "
        f"Daphne CPU {f['server_cpu_s']:.1f} s, {f['server_cpu_ms_per_request']:.2f} ms per request"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--postgres-server", default=DEFAULT_POSTGRES_SERVER, help="a URL without database")
    parser.add_argument("--duration", default="15s", help="wrk's --duration (15s)")
    parser.add_argument("--connections", type=positive_int, default=32)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--profile", metavar="FILE", help="py-spy output (.txt raw, .json speedscope, .svg)")
    parser.add_argument("--profile-seconds", type=float, default=10.0)
    parser.add_argument("--profile-gil", action="store_true", help="py-spy --gil: only the GIL holder")
    parser.add_argument("--skip-bare", action="store_true", help="the app only (e.g. while profiling)")
    args = parser.parse_args()
    if args.profile:
        args.profile = os.path.abspath(args.profile)

    started = time.monotonic()
    home = tempfile.mkdtemp(prefix="bench-single-")
    env = {**os.environ, "VAR_DIR": home, "DEBUG": "false", "SECURE_SSL_REDIRECT": "false"}
    env.pop("REDIS_URL", None)  # one process, its in-process bus: no relay
    ok = True
    try:
        with fresh_database(args, home) as (url, where):
            env["DATABASE_URL"] = url
            manage(env, "migrate", "--noinput", "-v0")
            token = api_token(env, AGENT, "agents")
            auditor = api_token(env, AUDITOR, "auditors")
            script = lua_script(home, token)

            load = f"wrk -t{args.threads} -c{args.connections} -d{args.duration}"
            log(f"app: Daphne over {args.database}; {load}")
            with daphne(env, log, log_prefix="bench_single_app_", check_output=check_daphne_output) as (
                port,
                pid,
            ):
                warm_up(port, token)
                before = store_stats(port, auditor)
                app = run_wrk(port, script, args, server_pid=pid, profile_pid=pid if args.profile else None)
                time.sleep(0.5)  # the requests in flight when wrk stopped are committed meanwhile
                after = store_stats(port, auditor)
            stored = count_stored(args.database, where)
            batches = after["batches"] - before["batches"]
            batch_events = after["stored"] - before["stored"]
            app["store_batches"] = batches
            app["store_events_per_batch"] = batch_events / batches if batches else None
            app["store_last_batch_ms"] = after["last_batch_ms"]
            app["stored_bench_events"] = stored
            in_flight = stored - app["created_201"]
            app["stored_minus_201"] = in_flight
            app["stored_check"] = 0 <= in_flight <= args.connections
            ok = app["stored_check"]

            bare = None
            if not args.skip_bare:
                log("bare: the same Daphne serving benchmarks._bare_asgi")
                with daphne(env, log, app=BARE_APP, log_prefix="bench_single_bare_") as (port, bare_pid):
                    warm_up(port, token)
                    bare = run_wrk(port, script, args, server_pid=bare_pid)
    finally:
        import shutil

        shutil.rmtree(home, ignore_errors=True)

    print(
        f"database: {args.database}; one event per POST; wrk -t{args.threads} -c{args.connections} "
        f"-d{args.duration} --latency; load average {os.getloadavg()[0]:.2f}"
    )
    print(fmt_line("app  POST /api/events/", app))
    print(
        f"app  store: {app['store_batches']} commits during the load, "
        f"{(app['store_events_per_batch'] or 0):.1f} events per commit, "
        f"last commit {app['store_last_batch_ms']} ms"
    )
    print(
        f"app  check: {app['stored_bench_events']} events stored, {app['created_201']} 201s seen by wrk, "
        f"difference {app['stored_minus_201']} (requests in flight at wrk's stop, at most "
        f"{args.connections}): {'ok' if app['stored_check'] else 'FAILED'}"
    )
    if bare is not None:
        print(fmt_line("bare ASGI app on Daphne", bare))
    if args.profile:
        print(f"profile: {args.profile} (the figures above include py-spy's overhead)")
    print(f"run time: {time.monotonic() - started:.0f} s")
    result = {
        "database": args.database,
        "duration": args.duration,
        "connections": args.connections,
        "threads": args.threads,
        "profiled": bool(args.profile),
        "app": {k: v for k, v in app.items() if k != "summary"},
        "bare": None if bare is None else {k: v for k, v in bare.items() if k != "summary"},
        "ratio": None if bare is None else app["requests_per_s"] / bare["requests_per_s"],
        "ok": ok,
    }
    print(RESULT_PREFIX + json.dumps(result))
    if bare is not None:
        print(f"ratio app/bare (requests/s): {result['ratio']:.4f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
