"""The background publisher: batching in order, retries with the same event ids, permanent refusals,
a bounded buffer, flush/close/atexit delivery, statistics, the asyncio variant.

Most tests run against a fake server (httpx.MockTransport); one runs a script against a plain HTTP
server to see the interpreter's exit deliver; the last one against Daphne serving the project, killed
with SIGKILL and restarted on the same port and database while events stream in.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import math
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from django.db import connection

from eventbus_client import AsyncEventPublisher, EventPublisher
from eventbus_client.publisher import encode_event
from events.tool_events import ToolExecutionCompletedEvent

ROOT = Path(__file__).resolve().parent.parent.parent
URL = "http://bus.test"
TOKEN = "agent-token"


def event(n: int, session: str = "s-1", **extra: Any) -> dict[str, Any]:
    return {"event_type": "tool_execution_completed", "session_id": session, "data": {"n": n}, **extra}


class FakeServer:
    """POST /api/events/ in memory: idempotent on event_id, all or nothing, with scripted failures.

    `failures` are used up one per request: "connect" (refused), "timeout" (no answer, nothing
    stored), "lost" (stored, then the answer lost), or a status code (answered, nothing stored)."""

    def __init__(self, failures: list[Any] | None = None, retry_after: str | None = None) -> None:
        self.failures = list(failures or [])
        self.retry_after = retry_after
        self.stored: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []
        self.bodies: list[bytes] = []
        self.times: list[float] = []
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()

    def handle(self, request: httpx.Request) -> httpx.Response:
        assert request.method == "POST" and request.url.path == "/api/events/"
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        assert request.headers["Content-Type"] == "application/json"
        self.gate.wait(10)
        with self.lock:
            self.bodies.append(request.content)
            self.times.append(time.monotonic())
            failure = self.failures.pop(0) if self.failures else None
            if failure == "connect":
                raise httpx.ConnectError("connection refused", request=request)
            if failure == "timeout":
                raise httpx.ReadTimeout("timed out", request=request)
            if isinstance(failure, int):
                headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
                return httpx.Response(
                    failure, json={"detail": "nope", "code": "store_unavailable"}, headers=headers
                )
            if isinstance(failure, tuple):
                status, body = failure
                return httpx.Response(status, json=body)
            events = json.loads(request.content)
            assert isinstance(events, list) and 1 <= len(events) <= 1000
            positions = []
            for item in events:
                if item["event_id"] not in self.stored:
                    self.stored[item["event_id"]] = item
                    self.order.append(item["event_id"])
                positions.append(self.order.index(item["event_id"]) + 1)
            if failure == "lost":
                raise httpx.RemoteProtocolError("peer closed connection without response", request=request)
            return httpx.Response(
                201, json={"positions": positions, "event_ids": [e["event_id"] for e in events]}
            )

    async def handle_async(self, request: httpx.Request) -> httpx.Response:
        return self.handle(request)

    def batches(self) -> list[list[dict[str, Any]]]:
        return [json.loads(body) for body in self.bodies]

    def stored_data(self) -> list[Any]:
        return [self.stored[event_id]["data"]["n"] for event_id in self.order]

    def publisher(self, **options: Any) -> EventPublisher:
        options = {
            "retry_delay": 0.01,
            "max_retry_delay": 0.05,
            "transport": httpx.MockTransport(self.handle),
            **options,
        }
        return EventPublisher(URL, TOKEN, **options)

    def async_publisher(self, **options: Any) -> AsyncEventPublisher:
        options = {
            "retry_delay": 0.01,
            "max_retry_delay": 0.05,
            "transport": httpx.MockTransport(self.handle_async),
            **options,
        }
        return AsyncEventPublisher(URL, TOKEN, **options)


# What publish() takes


def test_publish_fills_event_id_and_timestamp_and_keeps_given_ones():
    event_id, body = encode_event(event(1))
    sent = json.loads(body)
    assert sent["event_id"] == event_id and uuid.UUID(event_id).version == 4
    assert sent["timestamp"].endswith("Z") and "+" not in sent["timestamp"]
    given = str(uuid.uuid4())
    event_id, body = encode_event(event(2, event_id=given, timestamp="2024-05-01T12:00:00Z", position=7))
    assert event_id == given
    assert json.loads(body) == {**event(2), "event_id": given, "timestamp": "2024-05-01T12:00:00Z"}


def test_publish_takes_a_base_event_and_objects_with_attributes():
    typed = ToolExecutionCompletedEvent(tool_name="search", call_id="c-1", session_id="s-9")
    event_id, body = encode_event(typed)
    assert event_id == typed.event_id
    assert json.loads(body) == {key: value for key, value in typed.to_dict().items() if value is not None}

    @dataclass
    class Plain:
        event_type: str = "agent_processing_started"
        session_id: str = "s-2"
        data: dict[str, Any] | None = None

    _, body = encode_event(Plain(data={"agent_type": "coder"}))
    assert json.loads(body)["data"] == {"agent_type": "coder"}


@pytest.mark.parametrize(
    ("bad", "error", "names"),
    [
        (event(1, data={"tags": {1, 2}}), TypeError, "event['data']['tags']"),
        (event(1, data={"ratio": math.nan}), ValueError, "event['data']['ratio']"),
        (event(1, data={"text": "a\x00b"}), ValueError, "event['data']['text']"),
        (event(1, data={"text": "\ud800"}), ValueError, "event['data']['text']"),
        (event(1, data={"deep": json.loads("[" * 70 + "]" * 70)}), ValueError, "deeper than 64"),
        (event(1, colour="red"), ValueError, "'colour'"),
        ({"session_id": "s"}, TypeError, "event_type"),
        (event(1, event_type="Tool Done"), ValueError, "event_type"),
        (event(1, event_type="hitl_decision_made"), ValueError, "server alone"),
        (event(1, event_type="operator_signed_in"), ValueError, "server alone"),
        (event(1, event_id="not-a-uuid"), ValueError, "event_id"),
        (event(1, session_id=5), TypeError, "session_id"),
        (event(1, timestamp="yesterday"), ValueError, "timestamp"),
        (object(), TypeError, "publish() takes"),
    ],
)
def test_publish_refuses_what_the_server_would_at_once_naming_the_key(bad, error, names):
    server = FakeServer()
    with server.publisher() as publisher:
        with pytest.raises(error) as raised:
            publisher.publish(bad)
        assert names in str(raised.value)
        assert publisher.stats()["published"] == 0
    assert server.bodies == []


def test_publish_returns_within_microseconds_and_does_no_io_in_the_caller():
    server = FakeServer()
    server.gate.clear()  # the server hangs: publish must not notice
    publisher = server.publisher(batch_size=10)
    try:
        started = time.perf_counter()
        for n in range(2_000):
            publisher.publish(event(n))
        per_call = (time.perf_counter() - started) / 2_000
        assert per_call < 500e-6, per_call  # about 10 µs here; generous for a loaded CI machine
        assert publisher.stats()["buffered"] == 2_000
    finally:
        server.gate.set()
        assert publisher.close(timeout=10)
    assert server.stored_data() == list(range(2_000))


# Batching and order


def test_batches_of_batch_size_in_publishing_order():
    server = FakeServer()
    publisher = server.publisher(batch_size=10, flush_interval=5)
    ids = [publisher.publish(event(n)) for n in range(95)]
    assert publisher.flush(timeout=5)
    assert [len(batch) for batch in server.batches()] == [10] * 9 + [5]
    assert [item["event_id"] for batch in server.batches() for item in batch] == ids
    assert server.stored_data() == list(range(95))
    stats = publisher.stats()
    assert stats | {"retries": 0} == {
        "published": 95,
        "sent": 95,
        "failed": 0,
        "buffered": 0,
        "dropped": 0,
        "retries": 0,
        "batches": 10,
        "abandoned": 0,
    }
    publisher.close()


def test_a_partial_batch_goes_after_flush_interval_without_a_flush():
    server = FakeServer()
    with server.publisher(batch_size=100, flush_interval=0.1) as publisher:
        started = time.monotonic()
        publisher.publish(event(1))
        publisher.publish(event(2))
        while not server.stored and time.monotonic() - started < 5:
            time.sleep(0.01)
        waited = time.monotonic() - started
        assert server.stored_data() == [1, 2]
        assert 0.08 <= waited < 2
        assert publisher.stats()["batches"] == 1


def test_a_full_batch_goes_at_once():
    server = FakeServer()
    with server.publisher(batch_size=5, flush_interval=30) as publisher:
        for n in range(5):
            publisher.publish(event(n))
        deadline = time.monotonic() + 5
        while len(server.stored) < 5 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert server.stored_data() == list(range(5))


# Retries


@pytest.mark.parametrize("failures", [[503, 503], ["timeout"], ["lost"], ["connect", 502, 504, 429, 408]])
def test_retries_send_the_same_event_ids_and_store_each_once(failures):
    server = FakeServer(failures=failures)
    with server.publisher(batch_size=50) as publisher:
        for n in range(50):
            publisher.publish(event(n))
        assert publisher.flush(timeout=10)
        stats = publisher.stats()
    assert len(server.bodies) == len(failures) + 1
    assert len(set(server.bodies)) == 1  # byte for byte the same request, every time
    assert server.stored_data() == list(range(50))
    assert stats["sent"] == 50 and stats["failed"] == 0 and stats["retries"] == len(failures)
    assert stats["batches"] == 1


def test_retry_after_is_honoured():
    server = FakeServer(failures=[429], retry_after="0.4")
    with server.publisher() as publisher:
        publisher.publish(event(1))
        assert publisher.flush(timeout=10)
    assert server.times[1] - server.times[0] >= 0.39


def test_backoff_grows_with_full_jitter_up_to_the_cap():
    server = FakeServer(failures=["connect"] * 8)
    with server.publisher(retry_delay=0.02, max_retry_delay=0.1) as publisher:
        publisher.publish(event(1))
        assert publisher.flush(timeout=10)
    gaps = [later - earlier for earlier, later in zip(server.times, server.times[1:], strict=False)]
    assert len(gaps) == 8 and max(gaps) < 0.5  # capped (plus scheduling)
    assert publisher.stats()["retries"] == 8


def test_the_stream_waits_for_a_batch_being_retried_so_order_holds():
    server = FakeServer(failures=[503] * 5)
    with server.publisher(batch_size=3) as publisher:
        for n in range(9):
            publisher.publish(event(n))
        assert publisher.flush(timeout=10)
    assert server.stored_data() == list(range(9))


# Permanent refusals


def test_a_permanent_400_fails_the_batch_without_retry_and_the_next_batch_goes(caplog):
    refusal = (400, {"detail": "The store refused the events", "code": "invalid_event"})
    server = FakeServer(failures=[refusal])
    with server.publisher(batch_size=5) as publisher:
        for n in range(10):
            publisher.publish(event(n))
        assert publisher.flush(timeout=10)
        stats = publisher.stats()
    assert len(server.bodies) == 2  # never sent again
    assert server.stored_data() == list(range(5, 10))
    assert stats["failed"] == 5 and stats["sent"] == 5 and stats["retries"] == 0 and stats["buffered"] == 0
    assert "The store refused the events" in caplog.text and "HTTP 400 invalid_event" in caplog.text


@pytest.mark.parametrize(
    ("status", "code"), [(401, "not_authenticated"), (403, "permission_denied"), (404, "x")]
)
def test_other_4xx_are_permanent(status, code):
    server = FakeServer(failures=[(status, {"detail": "no", "code": code})])
    with server.publisher() as publisher:
        publisher.publish(event(1))
        assert publisher.flush(timeout=10)
        assert publisher.stats()["failed"] == 1
    assert len(server.bodies) == 1


def test_only_the_events_the_server_names_fail_and_the_rest_are_sent_again():
    refusal = (
        400,
        {
            "detail": "events[1]: bad",
            "code": "invalid_event",
            "errors": [{"index": 1, "message": "bad"}, {"index": 3, "message": "bad"}],
        },
    )
    server = FakeServer(failures=[refusal])
    with server.publisher(batch_size=5) as publisher:
        for n in range(5):
            publisher.publish(event(n))
        assert publisher.flush(timeout=10)
        stats = publisher.stats()
    assert [len(batch) for batch in server.batches()] == [5, 3]
    assert server.stored_data() == [0, 2, 4]
    assert stats["failed"] == 2 and stats["sent"] == 3 and stats["retries"] == 0


def test_a_413_splits_the_batch_in_order():
    server = FakeServer(failures=[(413, {"detail": "too large", "code": "payload_too_large"})])
    with server.publisher(batch_size=8) as publisher:
        for n in range(8):
            publisher.publish(event(n))
        assert publisher.flush(timeout=10)
    assert [len(batch) for batch in server.batches()] == [8, 4, 4]
    assert server.stored_data() == list(range(8))


def test_other_5xx_are_retried_a_few_times_then_failed():
    server = FakeServer(failures=[500] * 10)
    with server.publisher() as publisher:
        publisher.publish(event(1))
        assert publisher.flush(timeout=10)
        stats = publisher.stats()
    assert stats["failed"] == 1 and stats["retries"] == 3
    assert len(server.bodies) == 4


# A bounded buffer


def test_overflow_drop_counts_what_a_full_buffer_refused():
    server = FakeServer()
    server.gate.clear()  # the first batch hangs in flight
    publisher = server.publisher(batch_size=1, max_buffer=5, overflow="drop", flush_interval=0)
    try:
        assert publisher.publish(event(0)) is not None
        deadline = time.monotonic() + 5
        while publisher.stats()["buffered"] != 1 or publisher._queue:  # taken, in flight
            assert time.monotonic() < deadline
            time.sleep(0.005)
        results = [publisher.publish(event(n)) for n in range(1, 11)]
        assert [r is not None for r in results] == [True] * 5 + [False] * 5
        assert publisher.stats()["dropped"] == 5
    finally:
        server.gate.set()
        assert publisher.close(timeout=10)
    assert server.stored_data() == [0, 1, 2, 3, 4, 5]
    assert publisher.stats() | {"retries": 0} == {
        "published": 6,
        "sent": 6,
        "failed": 0,
        "buffered": 0,
        "dropped": 5,
        "retries": 0,
        "batches": 6,
        "abandoned": 0,
    }


def test_overflow_block_waits_for_room_and_loses_nothing():
    server = FakeServer()
    server.gate.clear()
    publisher = server.publisher(batch_size=2, max_buffer=4, flush_interval=0)
    done = threading.Event()

    def produce() -> None:
        for n in range(20):
            assert publisher.publish(event(n)) is not None
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    time.sleep(0.3)
    assert not done.is_set()  # blocked on the full buffer
    assert publisher.stats()["buffered"] <= 4 + 2
    server.gate.set()
    producer.join(10)
    assert done.is_set()
    assert publisher.close(timeout=10)
    assert server.stored_data() == list(range(20))
    assert publisher.stats()["dropped"] == 0


def test_overflow_block_with_a_timeout_drops_after_it():
    server = FakeServer()
    server.gate.clear()
    publisher = server.publisher(batch_size=1, max_buffer=1, flush_interval=0)
    try:
        publisher.publish(event(0))  # in flight, hanging
        deadline = time.monotonic() + 5
        while publisher._queue:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        publisher.publish(event(1))  # fills the buffer
        started = time.monotonic()
        assert publisher.publish(event(2), timeout=0.2) is None
        assert 0.19 <= time.monotonic() - started < 2
        assert publisher.stats()["dropped"] == 1
    finally:
        server.gate.set()
        publisher.close(timeout=10)
    assert server.stored_data() == [0, 1]


# flush, close, atexit


def test_close_delivers_then_refuses_more_and_is_idempotent():
    server = FakeServer()
    publisher = server.publisher(flush_interval=60)
    for n in range(3):
        publisher.publish(event(n))
    assert publisher.close()
    assert server.stored_data() == [0, 1, 2]
    assert not publisher._thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        publisher.publish(event(4))
    assert publisher.close()
    assert publisher.flush(timeout=0)


def test_close_gives_up_at_its_deadline_and_counts_the_rest_failed():
    server = FakeServer(failures=[503] * 10_000)
    publisher = server.publisher(batch_size=2)
    for n in range(5):
        publisher.publish(event(n))
    started = time.monotonic()
    assert publisher.close(timeout=0.5) is False
    assert time.monotonic() - started < 3
    stats = publisher.stats()
    assert stats["sent"] == 0 and stats["failed"] == stats["abandoned"] == 5 and stats["buffered"] == 0


def test_flush_with_a_timeout_returns_false_while_the_server_is_down():
    server = FakeServer(failures=["connect"] * 10_000)
    publisher = server.publisher()
    publisher.publish(event(1))
    assert publisher.flush(timeout=0.3) is False
    assert publisher.stats()["buffered"] == 1
    server.failures.clear()
    assert publisher.flush(timeout=10)
    publisher.close()
    assert server.stored_data() == [1]


class Recorder(http.server.BaseHTTPRequestHandler):
    """A real HTTP server's POST /api/events/: every event received, 201 for all."""

    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Recorder.received.extend(json.loads(body))
        answer = json.dumps({"positions": []}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[str]:
    Recorder.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_script_that_forgets_close_still_delivers_at_exit(recorder, kind):
    script = {
        "sync": """
            from eventbus_client import EventPublisher
            publisher = EventPublisher(URL, "t", flush_interval=60)
            for n in range(1000):
                publisher.publish({"event_type": "message_added", "session_id": "exit", "data": {"n": n}})
        """,
        "async": """
            import asyncio
            from eventbus_client import AsyncEventPublisher
            async def main():
                publisher = AsyncEventPublisher(URL, "t", flush_interval=60)
                for n in range(1000):
                    event = {"event_type": "message_added", "session_id": "exit", "data": {"n": n}}
                    await publisher.publish(event)
            asyncio.run(main())
        """,
    }[kind]
    done = subprocess.run(
        [sys.executable, "-c", f"URL = {recorder!r}\n" + textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert [item["data"]["n"] for item in Recorder.received] == list(range(1000))


# The asyncio variant


async def test_async_publisher_batches_retries_and_flushes_in_order():
    server = FakeServer(failures=[503, "timeout"])
    async with server.async_publisher(batch_size=10, flush_interval=5) as publisher:
        ids = [await publisher.publish(event(n)) for n in range(25)]
        ids.append(publisher.publish_nowait(event(25)))
        assert await publisher.flush(timeout=5)
        stats = publisher.stats()
    assert [item["event_id"] for item in json.loads(server.bodies[-1])] == ids[20:]
    assert server.stored_data() == list(range(26))
    assert stats["sent"] == 26 and stats["retries"] == 2 and stats["batches"] == 3 and stats["buffered"] == 0
    with pytest.raises(RuntimeError, match="closed"):
        await publisher.publish(event(99))


async def test_async_publish_waits_for_room_or_drops():
    server = FakeServer()
    blocked = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        await blocked.wait()
        return server.handle(request)

    publisher = AsyncEventPublisher(
        URL, TOKEN, batch_size=1, max_buffer=2, flush_interval=0, transport=httpx.MockTransport(slow)
    )
    await publisher.publish(event(0))
    await asyncio.sleep(0.05)  # taken, in flight
    await publisher.publish(event(1))
    await publisher.publish(event(2))
    assert publisher.publish_nowait(event(3)) is None  # never waits: dropped
    assert await publisher.publish(event(4), timeout=0.1) is None
    waiting = asyncio.ensure_future(publisher.publish(event(5)))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    blocked.set()
    assert await asyncio.wait_for(waiting, 5) is not None
    assert await publisher.close(timeout=5)
    assert server.stored_data() == [0, 1, 2, 5]
    assert publisher.stats()["dropped"] == 2


async def test_async_close_gives_up_at_its_deadline():
    server = FakeServer(failures=["connect"] * 10_000)
    publisher = server.async_publisher()
    await publisher.publish(event(1))
    assert await publisher.close(timeout=0.3) is False
    assert publisher.stats()["abandoned"] == 1


async def test_async_permanent_failure_and_drop_mode():
    server = FakeServer(failures=[(422, {"detail": "bad", "code": "invalid"})])
    async with server.async_publisher(overflow="drop", max_buffer=3, flush_interval=60) as publisher:
        results = [await publisher.publish(event(n)) for n in range(5)]
        assert [r is not None for r in results] == [True, True, True, False, False]
        assert await publisher.flush(timeout=5)
        await publisher.publish(event(9))
    stats = publisher.stats()
    assert stats["failed"] == 3 and stats["dropped"] == 2 and stats["sent"] == 1
    assert server.stored_data() == [9]


# Against Daphne, killed and restarted mid-stream

STREAM = 5_000


@dataclass
class ServerDatabase:
    url: str
    vendor: str

    def counts(self, session_id: str) -> tuple[int, int]:
        """(rows, distinct event ids) stored for `session_id`."""
        query = "SELECT COUNT(*), COUNT(DISTINCT event_id) FROM events_storedevent WHERE session_id = %s"
        if self.vendor == "sqlite":
            with sqlite3.connect(self.url.removeprefix("sqlite:///")) as db:
                row = db.execute(query.replace("%s", "?"), [session_id]).fetchone()
        else:
            import psycopg

            with psycopg.connect(self.url) as db:
                row = db.execute(query, [session_id]).fetchone()
        return int(row[0]), int(row[1])


@pytest.fixture
def server_database(tmp_path: Path) -> Iterator[ServerDatabase]:
    """A fresh, migrated database of the kind the test run uses (SQLite file or PostgreSQL)."""
    drop = None
    if connection.vendor == "postgresql":
        import psycopg

        name = f"test_pub_{uuid.uuid4().hex[:12]}"
        parts = urlsplit(os.environ["DATABASE_URL"])
        admin = urlunsplit(parts._replace(path="/postgres"))
        with psycopg.connect(admin, autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        database = ServerDatabase(urlunsplit(parts._replace(path=f"/{name}")), "postgresql")

        def drop() -> None:
            with psycopg.connect(admin, autocommit=True) as db:
                db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    else:
        database = ServerDatabase(f"sqlite:///{tmp_path / 'publisher.sqlite3'}", "sqlite")
    try:
        manage(database, "migrate", "--noinput", "-v0")
        yield database
    finally:
        if drop is not None:
            drop()


def manage(database: ServerDatabase, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database.url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


class Daphne:
    def __init__(self, database: ServerDatabase, port: int, log: Path) -> None:
        self.database, self.port, self.log = database, port, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port)]
                + ["eventbus_project.asgi:application"],
                cwd=ROOT,
                env={**os.environ, "DATABASE_URL": self.database.url},
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            assert self.process.poll() is None and time.monotonic() < deadline, self.log.read_text()[-3000:]
            time.sleep(0.1)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.timeout(90)
def test_every_event_is_stored_once_across_a_killed_and_restarted_server(server_database, tmp_path):
    token = manage(server_database, "create_api_token", "publisher-agent", "--group", "agents")
    token = token.strip().splitlines()[-1]
    server = Daphne(server_database, free_port(), tmp_path / "daphne.log")
    server.start()
    session = f"pub-{uuid.uuid4().hex[:8]}"
    publisher = EventPublisher(
        f"http://127.0.0.1:{server.port}",
        token,
        batch_size=100,
        timeout=5,
        retry_delay=0.1,
        max_retry_delay=0.5,
    )
    restarted = threading.Event()

    def restart() -> None:
        server.kill()
        time.sleep(1.0)
        server.start()
        restarted.set()

    try:
        restarter = None
        started = time.monotonic()
        for n in range(STREAM):
            publisher.publish(
                {
                    "event_type": "tool_execution_completed",
                    "session_id": session,
                    "source": "test_publisher",
                    "data": {"tool_name": "search", "call_id": f"call-{n}", "duration_ms": n},
                }
            )
            if n % 50 == 49:
                time.sleep(max(0.0, started + (n + 1) / 1_000 - time.monotonic()))  # ~1,000 events/s
            if n == STREAM // 3:
                restarter = threading.Thread(target=restart)
                restarter.start()
        assert restarter is not None
        restarter.join(60)
        assert restarted.is_set()
        assert publisher.flush(timeout=60), publisher.stats()
        stats = publisher.stats()
        assert publisher.close(timeout=10)
    finally:
        publisher.close(timeout=0)
        server.stop()
    assert stats["sent"] == STREAM and stats["failed"] == 0 and stats["dropped"] == 0, stats
    assert stats["retries"] >= 1, stats  # the kill was noticed
    assert server_database.counts(session) == (STREAM, STREAM)
