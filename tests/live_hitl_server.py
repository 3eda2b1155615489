"""The Daphne server the HITL client's live tests and the agent frameworks' adapters' live tests share
(a plugin of tests/conftest.py, so one server serves every module that asks for `daphne_server`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class LiveServer:
    base_url: str
    agent_token: str
    operator_token: str

    def operator(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base_url, headers={"Authorization": f"Bearer {self.operator_token}"}, timeout=10
        )


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def daphne_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Daphne on a fresh migrated SQLite database, with an agent's and an operator's token: one for the
    whole run (each test uses session ids of its own), shared by the HITL client's and the adapters' tests."""
    database = tmp_path_factory.mktemp("hitl-client") / "db.sqlite3"
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{database}"}

    def manage(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    manage("migrate", "--noinput", "-v0")
    tokens: dict[str, str] = {}

    def issue(name: str, group: str) -> None:
        tokens[group] = manage("create_api_token", name, "--group", group).strip().splitlines()[-1]

    issuers = [
        threading.Thread(target=issue, args=args) for args in [("agent-1", "agents"), ("op1", "operators")]
    ]
    for thread in issuers:
        thread.start()
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
    try:
        for thread in issuers:
            thread.join(timeout=120)
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "Daphne did not start"
            time.sleep(0.1)
        yield LiveServer(base_url, tokens["agents"], tokens["operators"])
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _, errors = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, errors = process.communicate()
        assert "Traceback" not in errors, errors
