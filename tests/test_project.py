"""The project around the bus: health check, settings, the admin account, clean shutdown."""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.test import AsyncClient

from eventbus_project import settings as project_settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.django_db
async def test_healthz_reports_every_dependency():
    response = await AsyncClient().get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["database"] == "ok" and body["channel_layer"] == "disabled"
    assert body["redis"] == ("ok" if project_settings.REDIS_URL else "disabled")


@pytest.mark.redis
@pytest.mark.django_db
async def test_healthz_checks_redis_when_configured():
    response = await AsyncClient().get("/healthz")
    assert response.json()["redis"] == "ok"


@pytest.mark.django_db
async def test_healthz_is_503_when_a_dependency_is_down(monkeypatch, settings):
    from ops import health

    async def broken() -> None:
        raise ConnectionError("database unreachable")

    monkeypatch.setattr(health, "_check_database", broken)
    response = await AsyncClient().get("/healthz")
    assert response.status_code == 503
    assert response.json()["database"] == "error"

    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    response = await AsyncClient().get("/healthz")
    assert response.status_code == 503 and response.json()["redis"] == "error"


def test_healthz_refuses_other_methods(client):
    assert client.post("/healthz").status_code == 405


@pytest.mark.parametrize("value, expected", [("true", True), ("0", False), ("Yes", True), ("off", False)])
def test_boolean_settings(monkeypatch, value, expected):
    monkeypatch.setenv("DEBUG_TEST_FLAG", value)
    assert project_settings.env_bool("DEBUG_TEST_FLAG", not expected) is expected


def test_bad_settings_fail_with_their_name(monkeypatch):
    monkeypatch.setenv("DEBUG_TEST_FLAG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="DEBUG_TEST_FLAG"):
        project_settings.env_bool("DEBUG_TEST_FLAG", False)
    monkeypatch.setenv("DEBUG_TEST_NUMBER", "lots")
    with pytest.raises(ImproperlyConfigured, match="DEBUG_TEST_NUMBER"):
        project_settings.env_number("DEBUG_TEST_NUMBER", 1)
    monkeypatch.setenv("DATABASE_URL", "mysql://nobody@nowhere/db")
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL"):
        project_settings._database()


def test_bad_bus_settings_fail_at_start_up(settings):
    from events.conf import bus_settings

    settings.EVENT_BUS = {"OVERFLOW": "explode"}
    with pytest.raises(ImproperlyConfigured, match="OVERFLOW"):
        bus_settings()
    settings.EVENT_BUS = {"MAX_QUEUE_SIZE": -1}
    with pytest.raises(ImproperlyConfigured, match="MAX_QUEUE_SIZE"):
        bus_settings()


def test_server_refuses_to_start_on_a_bad_setting():
    env = {**os.environ, "EVENT_BUS_OVERFLOW": "explode"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "EVENT_BUS['OVERFLOW'] must be 'wait' or 'drop'" in result.stderr


def test_sqlite_default_uses_wal():
    config = project_settings._database() if not os.environ.get("DATABASE_URL") else None
    if config is None:
        pytest.skip("DATABASE_URL is set")
    assert "journal_mode=WAL" in config["OPTIONS"]["init_command"]
    assert config["OPTIONS"]["transaction_mode"] == "IMMEDIATE"


@pytest.mark.django_db
def test_ensure_admin_creates_one_account_with_a_random_password(capsys):
    from django.contrib.auth import authenticate, get_user_model

    call_command("ensure_admin")
    first = capsys.readouterr().out
    password = first.split("password: ")[1].split()[0]
    assert len(password) >= 12
    assert authenticate(username="admin", password=password) is not None
    call_command("ensure_admin")
    assert "exists" in capsys.readouterr().out
    assert get_user_model().objects.filter(is_superuser=True).count() == 1


def test_a_script_that_publishes_from_plain_code_loses_nothing_at_exit(tmp_path):
    """publish_sync with no event loop anywhere: the bus's own loop drains before the process exits."""
    out = tmp_path / "handled.txt"
    script = f"""
import asyncio, sys
sys.path.insert(0, {str(ROOT)!r})
from events.event_bus import event_bus
from events.base import BaseEvent

async def slow(event):
    await asyncio.sleep(0.002)
    with open({str(out)!r}, "a") as handle:
        handle.write(event.event_id + "\\n")

event_bus.subscribe(handler=slow)
for n in range(200):
    event_bus.publish_sync(BaseEvent("tick", "metrics", data={{"n": n}}))
print(event_bus.get_stats()["pending"] > 0)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"  # events were still queued when the script ended
    assert len(out.read_text().splitlines()) == 200


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start_daphne(app: str, port: int, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), app],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _request(method: str, url: str, deadline_s: float = 30) -> bytes:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as response:
                return bytes(response.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _server_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A fresh migrated SQLite database for a server the test starts (the store needs its tables)."""
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", **extra}
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=120,
    )
    return env


def test_daphne_serves_healthz_and_stops_cleanly(tmp_path):
    """`make run`'s server: Daphne with this ASGI app answers /healthz and exits cleanly on SIGTERM."""
    port = _free_port()
    process = _start_daphne("eventbus_project.asgi:application", port, _server_env(tmp_path))
    try:
        body = json.loads(_request("GET", f"http://127.0.0.1:{port}/healthz"))
        assert body["channel_layer"] == "disabled" and body["database"] == "ok"
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "Traceback" not in output


def test_daphne_drains_accepted_events_when_stopped(tmp_path):
    """Events still queued when the server gets SIGTERM are handled before it exits."""
    port = _free_port()
    output_file = tmp_path / "handled.txt"
    env = _server_env(tmp_path, DRAIN_TEST_OUTPUT=str(output_file))
    process = _start_daphne("tests.e2e.drain_asgi:application", port, env)
    try:
        _request("GET", f"http://127.0.0.1:{port}/healthz")
        pending = int(_request("POST", f"http://127.0.0.1:{port}/burst"))
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert pending > 100, "the events should still be queued when the server is told to stop"
    assert process.returncode == 0, output
    assert len(output_file.read_text().splitlines()) == 200, output
    # The store committed them too before the process ended.
    with sqlite3.connect(env["DATABASE_URL"].removeprefix("sqlite:///")) as db:
        stored = db.execute(
            "SELECT COUNT(*) FROM events_storedevent WHERE event_type = 'burst_tick'"
        ).fetchone()[0]
    assert stored == 200


def test_a_django_script_commits_every_event_it_published_before_exiting(tmp_path):
    """A management command or script: the store commits what was published, although nobody waited."""
    database = tmp_path / "script.sqlite3"
    script = f"""
import os, sys
sys.path.insert(0, {str(ROOT)!r})
os.environ["DATABASE_URL"] = "sqlite:///{database}"
os.environ["DJANGO_SETTINGS_MODULE"] = "eventbus_project.settings"
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from events.base import BaseEvent
from events.event_bus import event_bus
for n in range(300):
    event_bus.publish_sync(BaseEvent("tick", "metrics", data={{"n": n}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT COUNT(*) FROM events_storedevent").fetchone()[0] == 300
