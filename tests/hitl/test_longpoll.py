"""The agents' long-poll beside Django's request cycle: same answers, no thread per waiting agent."""

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from asgiref.testing import ApplicationCommunicator
from channels.db import database_sync_to_async

from accounts.services import api_token_issue
from eventbus_project.asgi import application
from hitl.services import approval_decide, approval_request

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parents[2]


def scope(path: str, query: str, token: str | None, host: bytes = b"127.0.0.1") -> dict:
    headers = [(b"host", host)]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": headers,
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }


async def get(
    path: str, query: str, token: str | None, timeout: float = 10, host: bytes = b"127.0.0.1"
) -> tuple[int, dict]:
    communicator = ApplicationCommunicator(application, scope(path, query, token, host))
    await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
    start = await communicator.receive_output(timeout)
    body = await communicator.receive_output(timeout)
    return start["status"], json.loads(body["body"]) if body["body"].startswith(b"{") else {}


@pytest.fixture
def agent():
    return api_token_issue(username="agent-1", group="agents")


@pytest.fixture
def operator():
    return api_token_issue(username="olga", group="operators")


def ask(call_id: str, user) -> None:
    approval_request(
        call_id=call_id, session_id="s", tool_name="ls", arguments={"path": "/"}, requested_by=user
    )


async def test_the_long_poll_answers_when_decided(agent, operator):
    await database_sync_to_async(ask)("c1", agent.user)

    async def decide_soon() -> None:
        await asyncio.sleep(0.2)
        await database_sync_to_async(approval_decide)(call_id="c1", user=operator.user, decision="APPROVE")

    decider = asyncio.ensure_future(decide_soon())
    status, body = await get("/api/hitl/requests/c1/", "wait=20", agent.token)
    await decider
    assert status == 200 and body["status"] == "approved" and body["decided_by"] == "olga"


async def test_the_long_poll_refuses_like_the_api(agent):
    await database_sync_to_async(ask)("c1", agent.user)
    other = await database_sync_to_async(api_token_issue)(username="agent-2", group="agents")
    nobody = await database_sync_to_async(api_token_issue)(username="nobody")
    assert (await get("/api/hitl/requests/c1/", "wait=1", "ebt_wrong"))[0] == 401
    assert (await get("/api/hitl/requests/c1/", "wait=1", nobody.token))[0] == 403
    assert (await get("/api/hitl/requests/c1/", "wait=1", other.token))[0] == 404  # not its request
    status, body = await get("/api/hitl/requests/c1/", "wait=61", agent.token)
    assert status == 400 and body["errors"][0]["field"] == "wait"
    status, body = await get("/api/hitl/requests/c1/", "wait=0.2", agent.token)
    assert status == 200 and body["status"] == "pending"


async def test_a_host_outside_allowed_hosts_is_djangos_400(agent):
    await database_sync_to_async(ask)("c1", agent.user)
    status, _ = await get("/api/hitl/requests/c1/", "wait=1", agent.token, host=b"evil.example")
    assert status == 400


async def test_a_client_that_hangs_up_stops_the_wait(agent):
    await database_sync_to_async(ask)("c1", agent.user)
    communicator = ApplicationCommunicator(
        application, scope("/api/hitl/requests/c1/", "wait=30", agent.token)
    )
    await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await communicator.send_input({"type": "http.disconnect"})
    await communicator.wait(timeout=5)  # the app returns instead of waiting 30 s
    assert time.monotonic() - started < 5


def test_waiting_agents_cost_no_thread_each(tmp_path):
    """Forty agents long-polling a real Daphne: the server's thread count stays flat."""
    import socket

    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True, timeout=120
    )
    token = (
        subprocess.run(
            [sys.executable, "manage.py", "create_api_token", "agent-x", "--group", "agents"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "eventbus_project.asgi:application",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/api/hitl/requests/"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    sockets = []
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        for n in range(40):
            body = json.dumps(
                {"session_id": "s", "call_id": f"w{n}", "tool_name": "ls", "arguments": {}}
            ).encode()
            urllib.request.urlopen(urllib.request.Request(base, body, headers), timeout=10)
        threads_before = len(os.listdir(f"/proc/{server.pid}/task"))
        for n in range(40):
            connection = socket.create_connection(("127.0.0.1", port))
            request = (
                f"GET /api/hitl/requests/w{n}/?wait=30 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}"
            )
            connection.sendall(f"{request}\r\n\r\n".encode())
            sockets.append(connection)
        time.sleep(2)
        threads_waiting = len(os.listdir(f"/proc/{server.pid}/task"))
        assert threads_waiting - threads_before < 10, (threads_before, threads_waiting)
    finally:
        for connection in sockets:
            connection.close()
        server.terminate()
        server.wait(timeout=30)
