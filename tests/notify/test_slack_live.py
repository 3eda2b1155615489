"""Slack end to end, as a workspace uses it: Daphne with SLACK_* pointing at a local fake of Slack's Web
API; an agent asks over REST, the server's notifier posts the message; a click signed as Slack signs it
approves the request as the operator with that e-mail; the agent's request is approved and the message
is rewritten with the outcome."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .slack_fake import FakeSlack, click, signed

ROOT = Path(__file__).resolve().parents[2]
SECRET = "live-signing-secret"
pytestmark = pytest.mark.timeout(120)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str, FakeSlack]]:
    slack = FakeSlack()
    slack.users = {"U_OPS": {"email": "ops@example.com"}}
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "SLACK_BOT_TOKEN": "xoxb-live",
        "SLACK_SIGNING_SECRET": SECRET,
        "SLACK_CHANNEL": "#approvals",
        "SLACK_API_URL": slack.url,
    }
    env.pop("REDIS_URL", None)

    def manage(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    manage("migrate", "--noinput", "-v0")
    manage("create_operator", "ops")
    manage(
        "shell",
        "-c",
        "from django.contrib.auth.models import User; "
        "User.objects.filter(username='ops').update(email='ops@example.com')",
    )
    token = manage("create_api_token", "agent-live", "--group", "agents").strip().splitlines()[-1]
    port = _free_port()
    process = subprocess.Popen(
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
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "Daphne did not start"
            time.sleep(0.1)
        yield base, token, slack
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _, errors = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, errors = process.communicate()
        slack.close()
        assert "Traceback" not in errors, errors


def eventually(check, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout}s"
        time.sleep(0.05)


def test_a_request_is_posted_to_slack_approved_there_and_the_message_shows_it(served):
    base, token, slack = served
    agent = {"Authorization": f"Bearer {token}"}
    body = {"call_id": "live-1", "session_id": "s", "tool_name": "send_email", "arguments": {"to": "a"}}
    assert httpx.post(f"{base}/api/hitl/requests/", json=body, headers=agent).status_code == 201

    [posted] = eventually(lambda: slack.called("chat.postMessage"))
    assert any(b["type"] == "actions" for b in posted["blocks"])

    request = signed(SECRET, click("hitl_approve", "live-1", user="U_OPS"))
    answer = httpx.post(
        f"{base}/integrations/slack/interactions/",
        content=request["data"],
        headers={"Content-Type": request["content_type"], **request["headers"]},
    )
    assert answer.status_code == 200, answer.text
    state = httpx.get(f"{base}/api/hitl/requests/live-1/", headers=agent).json()
    assert (state["status"], state["decided_by"], state["channel"]) == ("approved", "ops", "slack")

    [update] = eventually(lambda: slack.called("chat.update"))
    assert update["ts"] == "1700000000.000001"
    assert "ops (slack)" in str(update["blocks"])
    assert all(b["type"] != "actions" for b in update["blocks"])
