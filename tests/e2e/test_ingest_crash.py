"""A server killed mid-stream loses no acknowledged event, and a client's retries store nothing twice.

Daphne serves POST /api/events/ while a client posts batches of 100 events; the server gets SIGKILL
(no draining, no clean shutdown) after a few batches were acknowledged. After a restart on the same
database, every event of every batch that got a 201 is stored exactly once at the position the 201
gave; the batches that got no answer are posted again and then are stored exactly once too.
"""

import http.client
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import dj_database_url
import psycopg
import pytest
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent.parent
BATCH_SIZE = 100
ACKNOWLEDGED_BEFORE_KILL = 3
KILL_WITHIN_S = 0.05


@dataclass
class ServerDatabase:
    url: str
    vendor: str

    def rows(self, session_prefix: str) -> list[tuple[str, str, int]]:
        """(session_id, event_id, position) of every stored event whose session starts with the prefix."""
        query = "SELECT session_id, event_id, position FROM events_storedevent WHERE session_id LIKE %s"
        pattern = session_prefix + "%"
        if self.vendor == "sqlite":
            with sqlite3.connect(self.url.removeprefix("sqlite:///")) as db:
                found = db.execute(query.replace("%s", "?"), [pattern]).fetchall()
        else:
            with psycopg.connect(self.url) as db:
                found = db.execute(query, [pattern]).fetchall()
        return [(session, str(uuid.UUID(str(event_id))), position) for session, event_id, position in found]


@pytest.fixture
def server_database(tmp_path: Path) -> Iterator[ServerDatabase]:
    """A fresh, migrated database of the same kind the test run uses (SQLite file or PostgreSQL)."""
    if connection.vendor == "postgresql":
        config = dj_database_url.parse(os.environ["DATABASE_URL"])
        name = f"test_crash_{uuid.uuid4().hex[:12]}"
        admin = {
            "host": config["HOST"] or None,
            "port": config["PORT"] or None,
            "user": config["USER"] or None,
            "password": config["PASSWORD"] or None,
            "dbname": "postgres",
            "autocommit": True,
        }
        with psycopg.connect(**admin) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        url = urlsplit(os.environ["DATABASE_URL"])._replace(path=f"/{name}")
        database = ServerDatabase(url=urlunsplit(url), vendor="postgresql")
    else:
        admin = {}
        name = ""
        database = ServerDatabase(url=f"sqlite:///{tmp_path / 'crash.sqlite3'}", vendor="sqlite")
    try:
        manage("migrate", "--noinput", "-v0", database=database)
        yield database
    finally:
        if admin:
            with psycopg.connect(**admin) as db:
                db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def server_env(database: ServerDatabase) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": database.url}


def manage(*args: str, database: ServerDatabase) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=server_env(database),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    """Daphne with the project's ASGI application, on a port of its own."""

    def __init__(self, database: ServerDatabase) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port)]
            + ["eventbus_project.asgi:application"],
            cwd=ROOT,
            env=server_env(database),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                status, _ = request(self.port, "GET", "/healthz", timeout=2)
                if status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError("Daphne did not start")
            time.sleep(0.1)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def request(
    port: int, method: str, path: str, body: bytes | None = None, token: str = "", timeout: float = 10
) -> tuple[int, Any]:
    client = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        client.request(method, path, body=body, headers=headers)
        response = client.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        client.close()


@dataclass
class Batch:
    session_id: str
    events: list[dict[str, Any]]
    status: int | None = None
    positions: list[int] = field(default_factory=list)

    @property
    def event_ids(self) -> list[str]:
        return [event["event_id"] for event in self.events]

    def body(self) -> bytes:
        return json.dumps(self.events).encode()


def make_batch(run: str, number: int) -> Batch:
    session_id = f"{run}-{number:04d}"
    events = [
        {
            "event_id": str(uuid.uuid4()),
            "event_type": "tool_execution_completed",
            "session_id": session_id,
            "data": {"tool_name": "search", "call_id": f"call-{number}-{n}", "duration_ms": n},
        }
        for n in range(BATCH_SIZE)
    ]
    return Batch(session_id=session_id, events=events)


def post_batch(port: int, token: str, batch: Batch) -> None:
    try:
        status, body = request(port, "POST", "/api/events/", batch.body(), token)
    except OSError:  # refused, reset, or cut off mid-answer: no answer
        return
    batch.status = status
    if status == 201:
        batch.positions = body["positions"]


def test_a_killed_server_loses_no_acknowledged_event_and_retries_store_once(server_database):
    token = manage("create_api_token", "crash-agent", "--group", "agents", database=server_database)
    token = token.strip().splitlines()[-1]
    run = f"crash-{uuid.uuid4().hex[:8]}"
    batches: list[Batch] = []
    killed = threading.Event()
    server = Server(server_database)

    def client(port: int) -> None:
        # Post batch after batch; after the kill, the first post that gets no answer ends the stream.
        while True:
            batch = make_batch(run, len(batches))
            batches.append(batch)
            post_batch(port, token, batch)
            if batch.status is None and killed.is_set():
                return

    poster = threading.Thread(target=client, args=(server.port,), daemon=True)
    try:
        poster.start()
        deadline = time.monotonic() + 30
        while sum(b.status == 201 for b in batches) < ACKNOWLEDGED_BEFORE_KILL:
            assert time.monotonic() < deadline, [b.status for b in batches]
            time.sleep(0.005)
        # Somewhere inside the next request: before, during or after its commit (all must hold).
        time.sleep(random.uniform(0, KILL_WITHIN_S))
        killed.set()
        server.kill()
        poster.join(timeout=30)
        assert not poster.is_alive()
    finally:
        killed.set()
        server.stop()

    acknowledged = [b for b in batches if b.status == 201]
    unanswered = [b for b in batches if b.status is None]
    assert len(acknowledged) >= ACKNOWLEDGED_BEFORE_KILL
    assert unanswered  # at least the request in flight when the server died
    assert all(b.status in (None, 201) for b in batches)

    server = Server(server_database)
    try:
        # Every acknowledged event survived, once, at the position its 201 gave.
        stored = {event_id: (session, position) for session, event_id, position in server_database.rows(run)}
        assert len(stored) == len(server_database.rows(run))  # no event id twice
        for batch in acknowledged:
            assert [stored[event_id] for event_id in batch.event_ids] == [
                (batch.session_id, position) for position in batch.positions
            ]
            assert batch.positions == sorted(batch.positions) and len(set(batch.positions)) == BATCH_SIZE

        # Of a batch cut off mid-commit, what was stored is a prefix of the list, in its order.
        for batch in unanswered:
            kept = [event_id for event_id in batch.event_ids if event_id in stored]
            assert kept == batch.event_ids[: len(kept)]
            kept_positions = [stored[event_id][1] for event_id in kept]
            assert kept_positions == sorted(kept_positions)

        # The client retries what got no answer; some of it may be stored already, none of it twice.
        for batch in unanswered:
            post_batch(server.port, token, batch)
            assert batch.status == 201
        rows = server_database.rows(run)
        assert len(rows) == len({event_id for _, event_id, _ in rows}) == BATCH_SIZE * len(batches)
        positions = {event_id: position for _, event_id, position in rows}
        for batch in batches:
            assert [positions[event_id] for event_id in batch.event_ids] == batch.positions
            assert batch.positions == sorted(batch.positions)
    finally:
        server.stop()
