"""Human-in-the-loop round trip: from an operator's decision to the waiting agent resuming, and the memory
of many agents waiting at once.

What is measured, in a fresh database (by default a temporary SQLite file; with `--database postgres` a
new `bench_hitl_<pid>` database on the PostgreSQL server), migrated with `manage.py migrate` and thrown
away at the end:

  1. In process (a subprocess of its own, since Django's settings are process-wide), N rounds (default
     200, after 10 untimed warm-up rounds) on one asyncio loop, with the app's bus as at server start-up:
     bound to the loop (as Daphne binds it to the server loop), `install_subscribers(event_bus)` (the
     store with the audit and metrics hooks) and `decision_waiters.subscribe(event_bus)`. Each round:
     `approval_request` (untimed), a task awaiting `await_decision(call_id, timeout=30)`, given 20 ms to
     load the request and park on its future, then `approval_decide` in a worker thread through
     `database_sync_to_async(..., thread_sensitive=False)`, as the API runs it (APPROVE, EDIT and REJECT
     in turn). Figures: the decide call's duration (as its awaiting caller sees it), and the latency
     from the decide call returning to its caller to the waiter resuming. The two happen on the same
     loop, woken from the same worker thread: the waiter is often resumed first (the decision is
     published on commit, inside the call), which makes that latency negative; it is reported as is,
     with the count of negatives, and beside it the latency from the decide call starting, which is
     never negative. Each waiter must get the decision made, with its arguments and approver.
  2. Over HTTP against a running Daphne (`python -m daphne ... eventbus_project.asgi:application`) with
     that database; tokens from `manage.py create_api_token` (agent: --group agents, operator: --group
     operators); N rounds (after 10 warm-up rounds), each on keep-alive `http.client` connections: the
     agent POSTs /api/hitl/requests/, a thread sends the long-poll GET
     /api/hitl/requests/{call_id}/?wait=30 on a connection of its own and is given 50 ms to park, the
     operator POSTs /api/hitl/requests/{call_id}/decision/ on a third connection. The latency is the
     time the long-poll response arrived minus the time the decision POST's response arrived (negative
     when the agent hears first; reported as is, with the count of negatives). Each long-poll answer
     must carry the status decided and the operator's name, and must not come before the decision.
     For scale, the round trip of GET /healthz (one database ping) on a keep-alive connection.
  3. Memory: Daphne's resident set size (psutil when installed, else VmRSS of /proc/PID/status), idle
     after the HTTP rounds (the baseline), then with W agents waiting at once (default 1,000): W
     concurrent long-polls GET ?wait=60, one raw asyncio connection each (opened in batches of 50), on
     W pending requests of the HTTP agent made beforehand through `approval_request` by the in-process
     child (untimed; the server never saw them being made). They count as waiting once Daphne holds W
     accepted connections, no answer has come back after at least 2 s, and the backlog is worked off:
     GET /healthz, whose database call waits in the same worker-thread queue as theirs, answers 3 times
     in a row about as fast as on the idle server. Then the RSS (the largest of three samples 0.2 s
     apart), Daphne's thread count and its CPU while they wait are taken. Release: the operator decides
     100 of them one at a time (each long-poll must answer with that decision, the others still
     waiting: the latency under load), and the rest hang up, which ends their waits; the RSS after.

Goals (the HITL issue): decide-returned -> waiter-resumed p50 under 20 ms in process and under 50 ms
over HTTP, and 1,000 waiters under 100 MB more than the idle server. The last line printed is the p50
over HTTP. For scale, measured on this kind of machine (2 cores): p50 about 0 ms in process, 0.5-1 ms
over HTTP on SQLite and 6-15 ms on PostgreSQL (a new connection for the re-read after the wake-up), a
decision POST round trip 16-19 ms (SQLite) and 28-41 ms (PostgreSQL); 1,000 waiters about +20 MB with
the long-poll served beside Django's request cycle (hitl/longpoll.py), +66 MB before it (a thread each).

Run from the repository root:
`.venv/bin/python benchmarks/hitl_roundtrip.py [--rounds N] [--waiters W] [--database sqlite|postgres]`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import http.client
import importlib
import json
import os
import platform
import resource
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import version
from typing import Any

from _common import (
    DEFAULT_POSTGRES_SERVER,
    RESULT_PREFIX,
    ROOT,
    api_token,
    cpu_seconds,
    daphne,
    log_traceback,
    manage,
    percentile,
    positive_int,
    postgres_database,
    postgres_version,
    proc_status,
    result_of,
    sqlite_file,
)

sys.path.insert(0, str(ROOT))

DATABASES = ("sqlite", "postgres")
WARMUP_ROUNDS = 10
WAITER_SETTLE_S = 0.02  # in process: time for a new waiter to load its request and park
POLL_SETTLE_S = 0.05  # over HTTP: time for a long-poll to reach the server and park
HTTP_WAIT_S = 30
MEMORY_WAIT_S = 60
OPEN_BATCH = 50  # long-poll connections opened at once (Twisted listens with a backlog of 50)
RELEASE_SAMPLE = 100  # waiters released by a decision, one at a time; the others hang up
PROBES_FAST = 3  # /healthz probes in a row as fast as on the idle server: the long-polls all parked
WAITING_CPU_WINDOW_S = 2.0
REQUEST_TIMEOUT_S = 600  # approval requests' own expiry: far beyond every wait here
DECISIONS = ("APPROVE", "EDIT", "REJECT")
STATUS_OF = {"APPROVE": "approved", "EDIT": "edited", "REJECT": "rejected"}
AGENT, OPERATOR = "bench-agent", "bench-operator"
MB = 1024 * 1024


def log(message: str) -> None:
    print(f"[hitl] {message}", file=sys.stderr, flush=True)


def summary(values: list[float]) -> dict[str, float]:
    """p50, p99 and max, in milliseconds, of durations in seconds."""
    return {
        "p50": percentile(values, 50) * 1000,
        "p99": percentile(values, 99) * 1000,
        "max": max(values) * 1000,
        "negative": sum(1 for value in values if value < 0),
    }


def arguments_of(index: int) -> dict[str, Any]:
    return {"path": f"bench/{index}.py", "content": "print('hello')"}


def edited_arguments_of(index: int) -> dict[str, Any]:
    return {"path": f"bench/safe-{index}.py", "content": "print('hello')"}


def raise_open_files_limit() -> None:
    """Room for the waiters' sockets: the soft limit of open files up to the hard one (here and in
    Daphne, which inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


# 1. In process: a child process with Django set up on the benchmark database.


def in_process_child(rounds: int, waiters: int) -> dict[str, Any]:
    import django

    os.environ["DJANGO_SETTINGS_MODULE"] = "eventbus_project.settings"
    django.setup()
    return asyncio.run(in_process(rounds, waiters))


async def in_process(rounds: int, waiters: int) -> dict[str, Any]:
    from channels.db import database_sync_to_async

    from accounts.services import api_token_issue
    from audit.models import AuditEntry
    from audit.subscribers import install_subscribers
    from events.event_bus import event_bus
    from events.event_store import event_store
    from events.models import StoredEvent
    from hitl.services import Decision, approval_decide, approval_request, await_decision, decision_waiters

    def in_thread(fn: Callable[..., Any]) -> Callable[..., Any]:
        return database_sync_to_async(fn, thread_sensitive=False)

    # As at server start-up: the bus on this loop, the store and its hooks, the waiters.
    event_bus.bind(asyncio.get_running_loop())
    install_subscribers(event_bus)
    decision_waiters.subscribe(event_bus)
    agent = (await in_thread(api_token_issue)(username=f"{AGENT}-inproc", group="agents")).user
    operator = (await in_thread(api_token_issue)(username=f"{OPERATOR}-inproc", group="operators")).user
    operator_name = operator.get_username()

    async def wait_for(call_id: str) -> tuple[Decision | None, float]:
        decision = await await_decision(call_id, timeout=30)
        return decision, time.perf_counter()

    def decide(call_id: str, decision: str, modified_args: dict[str, Any] | None) -> float:
        approval_decide(
            call_id=call_id, user=operator, decision=decision, modified_args=modified_args, comment="bench"
        )
        return time.perf_counter()  # in the worker thread, the moment approval_decide returned

    decide_call: list[float] = []
    after_return: list[float] = []
    after_return_in_thread: list[float] = []
    after_start: list[float] = []
    gc.collect()
    for index in range(WARMUP_ROUNDS + rounds):
        call_id = f"bench-inproc-{index}"
        await in_thread(approval_request)(
            call_id=call_id,
            session_id="bench-session",
            tool_name="write_file",
            arguments=arguments_of(index),
            reason="bench",
            agent="coder",
            timeout_s=REQUEST_TIMEOUT_S,
            requested_by=agent,
        )
        waiter = asyncio.create_task(wait_for(call_id))
        await asyncio.sleep(WAITER_SETTLE_S)
        assert not waiter.done(), f"{call_id}: the waiter returned before any decision: {waiter.result()}"
        assert len(decision_waiters) == 1, f"{call_id}: {len(decision_waiters)} waiters registered"
        kind = DECISIONS[index % len(DECISIONS)]
        modified = edited_arguments_of(index) if kind == "EDIT" else None
        started = time.perf_counter()
        returned_in_thread = await in_thread(decide)(call_id, kind, modified)
        returned = time.perf_counter()
        decision, resumed = await asyncio.wait_for(waiter, 35)
        assert decision is not None, f"{call_id}: the waiter timed out"
        expected = modified if kind == "EDIT" else arguments_of(index)
        got = (decision.call_id, decision.decision, decision.status, decision.arguments, decision.decided_by)
        want = (call_id, kind, STATUS_OF[kind], expected, operator_name)
        assert got == want, f"{call_id}: the waiter got {got}, expected {want}"
        if index >= WARMUP_ROUNDS:
            decide_call.append(returned - started)
            after_return.append(resumed - returned)
            after_return_in_thread.append(resumed - returned_in_thread)
            after_start.append(resumed - started)

    # Untimed: the pending requests the memory run's agents will wait on, asked by the HTTP agent.
    def create_pending() -> float:
        from django.contrib.auth import get_user_model

        owner = get_user_model().objects.get(username=AGENT)
        started = time.perf_counter()
        for index in range(waiters):
            approval_request(
                call_id=f"bench-mem-{index}",
                session_id="bench-session",
                tool_name="write_file",
                arguments=arguments_of(index),
                reason="bench",
                agent="coder",
                timeout_s=REQUEST_TIMEOUT_S,
                requested_by=owner,
            )
        return time.perf_counter() - started

    created_s = await in_thread(create_pending)()

    drained = await event_bus.drain(30)
    flushed = await event_store.flush()
    assert drained and flushed, f"drain={drained} flush={flushed}"
    await event_bus.shutdown()

    def stored() -> tuple[int, int]:
        return (
            StoredEvent.objects.filter(event_type="hitl_decision_made").count(),
            AuditEntry.objects.filter(event_type="hitl_decision_made").count(),
        )

    events, audited = await in_thread(stored)()
    total = WARMUP_ROUNDS + rounds
    assert events == total and audited == total, f"{events} decision events, {audited} audited of {total}"
    return {
        "rounds": rounds,
        "created_s": created_s,
        "decide_call": summary(decide_call),
        "latency": summary(after_return),
        "latency_in_thread": summary(after_return_in_thread),
        "latency_from_start": summary(after_start),
    }


# Helpers of the parent: the server's memory and sockets, the database.


def rss_bytes(pid: int) -> int:
    """The resident set size of `pid`: psutil when installed, else VmRSS of /proc/PID/status."""
    try:
        psutil = importlib.import_module("psutil")
    except ImportError:
        psutil = None
    if psutil is not None:
        return int(psutil.Process(pid).memory_info().rss)
    return proc_status(pid, "VmRSS") * 1024


def threads_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise RuntimeError(f"no thread count for process {pid}")


async def rss_sampled(pid: int, samples: int = 3) -> int:
    """The largest of a few RSS samples 0.2 s apart."""
    values = []
    for _ in range(samples):
        values.append(rss_bytes(pid))
        await asyncio.sleep(0.2)
    return max(values)


def accepted_connections(pid: int, port: int) -> int:
    """How many established TCP connections to `port` process `pid` has accepted (holds a descriptor of)."""
    inodes = set()
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue  # closed meanwhile
        if link.startswith("socket:["):
            inodes.add(link[len("socket:[") : -1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                rows = handle.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            fields = row.split()  # sl, local address, remote address, state (01: established), ..., inode
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01" and fields[9] in inodes:
                count += 1
    return count


@contextmanager
def fresh_database(database: str, server: str) -> Iterator[str]:
    """A new empty database's DATABASE_URL; dropped or removed at the end."""
    if database == "postgres":
        with postgres_database(server, f"bench_hitl_{os.getpid()}") as url:
            yield url
    else:
        with sqlite_file("bench_hitl_") as path:
            yield f"sqlite:///{path}"


def run_in_process(env: dict[str, str], rounds: int, waiters: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--in-process-child", "--rounds", str(rounds)]
    command += ["--waiters", str(waiters)]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        stdout, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    result = result_of(stdout)
    if result is not None:
        return result
    raise SystemExit(f"the in-process run failed (exit code {process.returncode}); see above")


# 2. Over HTTP: http.client, keep-alive connections, the long-poll in a thread.


class Connection:
    """A keep-alive HTTP/1.1 connection sending JSON with a bearer token."""

    def __init__(self, port: int, token: str, timeout: float = 60) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def send(self, method: str, path: str, payload: Any = None) -> tuple[int, Any]:
        body = None if payload is None else json.dumps(payload).encode()
        for attempt in (1, 2):  # a keep-alive connection the server closed: reconnect once
            try:
                self.conn.request(method, path, body=body, headers=self.headers)
                response = self.conn.getresponse()
                data = response.read()
                break
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                if attempt == 2:
                    raise
        return response.status, json.loads(data) if data else None

    def close(self) -> None:
        self.conn.close()


def request_body(call_id: str, index: int) -> dict[str, Any]:
    return {
        "session_id": "bench-session",
        "call_id": call_id,
        "tool_name": "write_file",
        "arguments": arguments_of(index),
        "reason": "bench",
        "agent": "coder",
        "timeout_s": REQUEST_TIMEOUT_S,
    }


def decision_body(kind: str, index: int) -> dict[str, Any]:
    body: dict[str, Any] = {"decision": kind, "comment": "bench"}
    if kind == "EDIT":
        body["modified_args"] = edited_arguments_of(index)
    return body


def check_decided(call_id: str, kind: str, index: int, answer: Any, what: str) -> None:
    expected = edited_arguments_of(index) if kind == "EDIT" else None
    got = (answer.get("call_id"), answer.get("status"), answer.get("decided_by"), answer.get("modified_args"))
    want = (call_id, STATUS_OF[kind], OPERATOR, expected)
    assert got == want, f"{call_id}: {what} answered {got}, expected {want}"


def measure_http(port: int, agent_token: str, operator_token: str, rounds: int) -> dict[str, Any]:
    agent = Connection(port, agent_token)
    poller = Connection(port, agent_token)
    operator = Connection(port, operator_token)
    health = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        healthz: list[float] = []
        for _ in range(WARMUP_ROUNDS + rounds):
            started = time.perf_counter()
            health.request("GET", "/healthz")
            response = health.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"/healthz answered {response.status}")
            healthz.append(time.perf_counter() - started)

        decide_call: list[float] = []
        latency: list[float] = []
        from_sent: list[float] = []
        gc.collect()
        for index in range(WARMUP_ROUNDS + rounds):
            call_id = f"bench-http-{index}"
            status, created = agent.send("POST", "/api/hitl/requests/", request_body(call_id, index))
            assert status == 201 and created["status"] == "pending", f"{call_id}: create {status} {created}"
            polled: dict[str, Any] = {}

            def poll(call_id: str = call_id, polled: dict[str, Any] = polled) -> None:
                try:
                    polled["answer"] = poller.send("GET", f"/api/hitl/requests/{call_id}/?wait={HTTP_WAIT_S}")
                except Exception as error:  # reported by the main thread
                    polled["error"] = error
                polled["arrived"] = time.perf_counter()

            thread = threading.Thread(target=poll, name="long-poll")
            thread.start()
            time.sleep(POLL_SETTLE_S)
            assert "arrived" not in polled, f"{call_id}: the long-poll returned before the decision: {polled}"
            kind = DECISIONS[index % len(DECISIONS)]
            sent = time.perf_counter()
            status, decided = operator.send(
                "POST", f"/api/hitl/requests/{call_id}/decision/", decision_body(kind, index)
            )
            returned = time.perf_counter()
            thread.join(HTTP_WAIT_S + 5)
            assert not thread.is_alive(), f"{call_id}: no long-poll answer within {HTTP_WAIT_S + 5} s"
            assert status == 200, f"{call_id}: the decision answered {status} {decided}"
            check_decided(call_id, kind, index, decided, "the decision POST")
            if "error" in polled:
                raise RuntimeError(f"{call_id}: the long-poll failed: {polled['error']!r}")
            poll_status, answer = polled["answer"]
            assert poll_status == 200, f"{call_id}: the long-poll answered {poll_status} {answer}"
            check_decided(call_id, kind, index, answer, "the long-poll")
            if index >= WARMUP_ROUNDS:
                decide_call.append(returned - sent)
                latency.append(polled["arrived"] - returned)
                from_sent.append(polled["arrived"] - sent)
    finally:
        for conn in (agent, poller, operator):
            conn.close()
        health.close()
    return {
        "rounds": rounds,
        "healthz": summary(healthz[WARMUP_ROUNDS:]),
        "decide_call": summary(decide_call),
        "latency": summary(latency),
        "latency_from_sent": summary(from_sent),
    }


# 3. Memory: raw asyncio connections, one per waiting agent.


class RawConnection:
    """A minimal HTTP/1.1 client connection over asyncio streams (Content-Length or chunked bodies)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, token: str) -> None:
        self.reader = reader
        self.writer = writer
        self.token = token

    @classmethod
    async def open(cls, port: int, token: str) -> RawConnection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, token)

    def send(self, method: str, path: str, payload: Any = None) -> None:
        body = b"" if payload is None else json.dumps(payload).encode()
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {self.token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)

    async def receive(self) -> tuple[int, Any]:
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                key, value = line.split(":", 1)
                headers[key.strip().lower()] = value.strip()
        if "content-length" in headers:
            data = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                parts.append(await self.reader.readexactly(size + 2))
                if size == 0:
                    break
            data = b"".join(part[:-2] for part in parts)
        else:
            data = await self.reader.read()
        return status, json.loads(data) if data else None

    async def request(self, method: str, path: str, payload: Any = None) -> tuple[int, Any]:
        self.send(method, path, payload)
        await self.writer.drain()
        return await self.receive()

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


async def memory(
    port: int, pid: int, agent_token: str, operator_token: str, waiters: int, healthz_p99_ms: float
) -> dict[str, Any]:
    await asyncio.sleep(1.0)
    figures: dict[str, Any] = {
        "waiters": waiters,
        "idle": await rss_sampled(pid),
        "threads_idle": threads_of(pid),
    }
    probe_limit = max(2 * healthz_p99_ms, 20.0) / 1000

    # W agents waiting at once: one connection and one long-poll each, on the requests made beforehand.
    connections: list[RawConnection] = []
    polls: list[asyncio.Task[tuple[int, Any, float]]] = []

    async def poll(conn: RawConnection) -> tuple[int, Any, float]:
        status, answer = await conn.receive()
        return status, answer, time.perf_counter()

    cpu_start = cpu_seconds(pid)
    started = time.perf_counter()
    for first in range(0, waiters, OPEN_BATCH):
        batch = await asyncio.gather(
            *(RawConnection.open(port, agent_token) for _ in range(first, min(first + OPEN_BATCH, waiters)))
        )
        for offset, conn in enumerate(batch):
            conn.send("GET", f"/api/hitl/requests/bench-mem-{first + offset}/?wait={MEMORY_WAIT_S}")
            connections.append(conn)
            polls.append(asyncio.create_task(poll(conn)))
        await asyncio.gather(*(conn.writer.drain() for conn in batch))
    sent = time.perf_counter()
    log(f"sent {waiters:,} long-polls in {sent - started:.1f} s")

    # All waiting: every connection accepted, no answer back after >= 2 s, and the backlog worked off:
    # /healthz, which waits in the same worker-thread queue as the long-polls' database calls, answers
    # as fast as on the idle server (PROBES_FAST times in a row).
    probe = await RawConnection.open(port, agent_token)
    fast = 0
    try:
        while True:
            await asyncio.sleep(0.25)
            asked = time.perf_counter()
            status, _ = await asyncio.wait_for(probe.request("GET", "/healthz"), 30)
            took = time.perf_counter() - asked
            accepted = accepted_connections(pid, port) - 1  # the probe's
            answered = [task for task in polls if task.done()]
            if answered:
                raise AssertionError(
                    f"{len(answered)} long-polls returned before any decision: {answered[0]}"
                )
            # A 503 is /healthz giving up on its 3 s checks: the worker threads are still busy.
            fast = fast + 1 if status == 200 and took <= probe_limit and accepted >= waiters else 0
            if fast >= PROBES_FAST and time.perf_counter() - sent >= 2.0:
                break
            if time.perf_counter() - sent > 30:
                raise AssertionError(
                    f"not all waiting 30 s after the last long-poll: {accepted} connections accepted, "
                    f"/healthz answered {status} in {took * 1000:.0f} ms"
                )
    finally:
        await probe.close()
    parked = time.perf_counter()
    log(f"/healthz back to {took * 1000:.1f} ms, {accepted:,} connections accepted, no answer yet")
    figures["waiting"] = await rss_sampled(pid)
    figures["threads_waiting"] = threads_of(pid)
    figures["parked_s"] = parked - started
    figures["accepted"] = accepted
    figures["cpu_to_park_ms"] = (cpu_seconds(pid) - cpu_start) / waiters * 1000
    log(f"{waiters:,} waiting {parked - started:.1f} s after the first long-poll; RSS sampled")

    # While they wait: the server's CPU (each waiter re-checks the database every HITL_RECHECK_INTERVAL_S).
    cpu_before, at_before = cpu_seconds(pid), time.perf_counter()
    await asyncio.sleep(WAITING_CPU_WINDOW_S)
    figures["waiting_cpu"] = (cpu_seconds(pid) - cpu_before) / (time.perf_counter() - at_before)
    answered = [task for task in polls if task.done()]
    assert not answered, f"{len(answered)} long-polls returned before any decision: {answered[0]}"

    # Release: the operator decides a sample one at a time (each long-poll must return that decision),
    # with all the others still waiting; the rest hang up, which ends their waits on the server.
    operator = await RawConnection.open(port, operator_token)
    latency: list[float] = []
    for index in range(0, waiters, max(1, waiters // RELEASE_SAMPLE)):
        kind = DECISIONS[index % len(DECISIONS)]
        call_id = f"bench-mem-{index}"
        status, answer = await operator.request(
            "POST", f"/api/hitl/requests/{call_id}/decision/", decision_body(kind, index)
        )
        returned = time.perf_counter()
        assert status == 200, f"{call_id}: the decision answered {status} {answer}"
        check_decided(call_id, kind, index, answer, "the decision POST")
        poll_status, poll_answer, arrived = await asyncio.wait_for(polls[index], 30)
        assert poll_status == 200, f"{call_id}: the long-poll answered {poll_status} {poll_answer}"
        check_decided(call_id, kind, index, poll_answer, "the long-poll")
        latency.append(arrived - returned)
    await operator.close()
    finished = sum(1 for task in polls if task.done())
    assert finished == len(latency), f"{finished} long-polls answered, {len(latency)} decided"
    figures["release_latency"] = summary(latency)
    figures["released"] = len(latency)
    for task in polls:
        task.cancel()
    await asyncio.gather(*polls, return_exceptions=True)
    await asyncio.gather(*(conn.close() for conn in connections))
    await asyncio.sleep(2.0)
    figures["after_release"] = rss_bytes(pid)
    figures["threads_after"] = threads_of(pid)
    figures["sockets_after"] = accepted_connections(pid, port)
    return figures


# The parent: the database, the in-process child, Daphne, the figures.


def run(database: str, server: str, rounds: int, waiters: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with fresh_database(database, server) as url:
        env = dict(os.environ, DATABASE_URL=url, EVENTS_LOG_LEVEL="WARNING")
        env.pop("REDIS_URL", None)  # one server process: the in-memory channel layer is enough
        started = time.perf_counter()
        manage(env, "migrate", "--noinput", "-v0")
        log(f"migrated {database} in {time.perf_counter() - started:.1f} s")

        tokens = {
            name: api_token(env, name, group) for name, group in ((AGENT, "agents"), (OPERATOR, "operators"))
        }

        started = time.perf_counter()
        results["in_process"] = run_in_process(env, rounds, waiters)
        log(
            f"in process: {rounds} rounds, then {waiters:,} pending requests made in "
            f"{results['in_process']['created_s']:.1f} s; {time.perf_counter() - started:.1f} s in all"
        )

        # The waiters' sockets: the open files limit raised in Daphne too, by one setrlimit call before exec.
        served = daphne(
            env, log, stop_timeout_s=45, preexec_fn=raise_open_files_limit, check_output=log_traceback
        )
        with served as (port, pid):
            log(f"daphne up on port {port}, pid {pid}")
            results["rss_start"] = rss_bytes(pid)
            started = time.perf_counter()
            results["http"] = measure_http(port, tokens[AGENT], tokens[OPERATOR], rounds)
            log(f"over HTTP: {rounds} rounds in {time.perf_counter() - started:.1f} s")
            started = time.perf_counter()
            healthz_p99 = results["http"]["healthz"]["p99"]
            results["memory"] = asyncio.run(
                memory(port, pid, tokens[AGENT], tokens[OPERATOR], waiters, healthz_p99)
            )
            log(f"memory: {waiters:,} waiters in {time.perf_counter() - started:.1f} s")
    return results


def server_version(database: str, server: str) -> str:
    if database == "sqlite":
        return f"SQLite {sqlite3.sqlite_version}"
    return postgres_version(server)


def report(results: dict[str, Any], waiters: int) -> float:
    def line(name: str, figures: dict[str, float], note: str = "") -> None:
        p50, p99, top = figures["p50"], figures["p99"], figures["max"]
        print(f"  {name:<60} p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  max {top:7.2f} ms{note}")

    def negatives(figures: dict[str, float], rounds: int) -> str:
        count = int(figures["negative"])
        return f"  ({count} of {rounds} negative: the waiter first)" if count else ""

    local = results["in_process"]
    n = local["rounds"]
    print(f"in process: await_decision woken by approval_decide in a worker thread, {n} rounds")
    line("decide call (database_sync_to_async, thread_sensitive=False)", local["decide_call"])
    line("decide call started -> waiter resumed", local["latency_from_start"])
    line(
        "approval_decide returned (in its thread) -> waiter resumed",
        local["latency_in_thread"],
        negatives(local["latency_in_thread"], n),
    )
    line(
        "decide call returned to its caller -> waiter resumed",
        local["latency"],
        negatives(local["latency"], n),
    )

    remote = results["http"]
    n = remote["rounds"]
    print(f"over HTTP: Daphne, long-poll GET ?wait={HTTP_WAIT_S}, keep-alive connections, {n} rounds")
    line("GET /healthz round trip (for scale: one database ping)", remote["healthz"])
    line("decision POST round trip", remote["decide_call"])
    line("decision POST sent -> long-poll response arrived", remote["latency_from_sent"])
    line(
        "decision POST response -> long-poll response arrived",
        remote["latency"],
        negatives(remote["latency"], n),
    )

    mem = results["memory"]
    print(
        f"memory: Daphne's RSS, {waiters:,} agents waiting at once "
        f"(GET ?wait={MEMORY_WAIT_S}, a connection each)"
    )
    for name, value in (
        ("at start-up", results["rss_start"]),
        ("idle, after the HTTP rounds (the baseline)", mem["idle"]),
        (f"{waiters:,} waiting", mem["waiting"]),
        ("after their release", mem["after_release"]),
    ):
        print(f"  {name:<60} {value / MB:8.1f} MB")
    added = (mem["waiting"] - mem["idle"]) / MB
    print(
        f"  all {waiters:,} waiting {mem['parked_s']:.1f} s after the first long-poll was sent "
        f"({mem['accepted']:,} sockets more; {mem['cpu_to_park_ms']:.1f} ms of server CPU each)"
    )
    print(
        f"  server CPU while they wait (re-checks of the database included): {mem['waiting_cpu']:.2f} cores"
    )
    print(
        f"  Daphne's threads: {mem['threads_idle']} idle, {mem['threads_waiting']:,} with {waiters:,} "
        f"waiting, {mem['threads_after']} after their release"
    )
    line(
        f"{mem['released']} released one at a time: decision response -> long-poll",
        mem["release_latency"],
        negatives(mem["release_latency"], mem["released"]),
    )
    print(f"  the others hung up; sockets still open on the server 2 s later: {mem['sockets_after']}")
    print(f"  {waiters:,} waiting - idle: {added:.1f} MB ({added * 1024 / waiters:.1f} KB per waiter)")

    local_p50 = local["latency"]["p50"]
    remote_p50 = remote["latency"]["p50"]
    per_1000 = added * 1000 / waiters
    scaled = "" if waiters == 1000 else f", {per_1000:.1f} MB per 1,000"
    print("goals:")
    print(f"  in process p50 {local_p50:.1f} ms (goal < 20 ms): {'met' if local_p50 < 20 else 'MISSED'}")
    print(f"  over HTTP p50 {remote_p50:.1f} ms (goal < 50 ms): {'met' if remote_p50 < 50 else 'MISSED'}")
    print(
        f"  {waiters:,} waiters +{added:.1f} MB{scaled} (goal < 100 MB per 1,000): "
        f"{'met' if per_1000 < 100 else 'MISSED'}"
    )
    return float(remote_p50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--rounds", type=positive_int, default=200, help="timed rounds, in process and over HTTP (200)"
    )
    parser.add_argument("--waiters", type=positive_int, default=1000, help="agents waiting at once (1000)")
    parser.add_argument("--database", choices=DATABASES, default="sqlite", help="where (sqlite)")
    parser.add_argument(
        "--postgres-server",
        default=DEFAULT_POSTGRES_SERVER,
        help=f"PostgreSQL server URL, no database; its user may create databases ({DEFAULT_POSTGRES_SERVER})",
    )
    parser.add_argument("--in-process-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.in_process_child:  # DATABASE_URL is set by the parent
        result = in_process_child(args.rounds, args.waiters)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return

    raise_open_files_limit()
    server = args.postgres_server.rstrip("/")
    print(
        f"Python {platform.python_version()}, django {version('django')}, daphne {version('daphne')}, "
        f"{server_version(args.database, server)}; {os.cpu_count()} CPUs; {args.rounds} rounds "
        f"(+{WARMUP_ROUNDS} warm-up), {args.waiters:,} waiters",
        flush=True,
    )
    started = time.perf_counter()
    results = run(args.database, server, args.rounds, args.waiters)
    print(f"all runs took {time.perf_counter() - started:.1f} s")
    p50 = report(results, args.waiters)
    print(f"p50 over HTTP: {round(p50, 1) + 0.0:.1f} ms")  # + 0.0: no "-0.0"


if __name__ == "__main__":
    main()
