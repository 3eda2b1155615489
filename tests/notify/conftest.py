"""A local webhook receiver that verifies with the standardwebhooks library, the delivery worker run on
the test's loop, and settings that let the worker send to it (http on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from notify.delivery import DeliveryWorker
from notify.webhooks import delivery_signal


class Receiver:
    """A webhook receiver on 127.0.0.1: accepts (2xx) or refuses (500) each POST, records them all."""

    def __init__(self) -> None:
        self.secret: str | None = None
        self.fail_until = 0.0  # monotonic: refuse every request before it
        self.always_fail = False
        self.delay_s = 0.0
        self.reply = b'{"ok": true}'
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {key.lower(): value for key, value in self.headers.items()}
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                verified = None
                if receiver.secret:
                    try:
                        verified = Webhook(receiver.secret).verify(body, headers)
                    except WebhookVerificationError:
                        verified = None
                accepted = (
                    verified is not None
                    and not receiver.always_fail
                    and time.monotonic() >= receiver.fail_until
                )
                with receiver.lock:
                    receiver.requests.append(
                        {
                            "headers": headers,
                            "body": json.loads(body),
                            "verified": verified is not None,
                            "accepted": accepted,
                            "at": time.monotonic(),
                        }
                    )
                self.send_response(200 if accepted else 500)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(receiver.reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def accepted_positions(self) -> list[int]:
        with self.lock:
            return [r["body"]["position"] for r in self.requests if r["accepted"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = Receiver()
    yield made
    made.close()


@pytest.fixture
def make_receiver():
    made: list[Receiver] = []

    def make() -> Receiver:
        made.append(Receiver())
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


@pytest.fixture
def local_webhooks(settings):
    """Let the worker send to the local receiver, retry fast, and poll often."""
    settings.WEBHOOK_ALLOW_HTTP = True
    settings.WEBHOOK_ALLOW_LOOPBACK = True
    settings.WEBHOOK_RETRY_BASE_S = 0.05
    settings.WEBHOOK_RETRY_MAX_DELAY_S = 0.2
    settings.WEBHOOK_POLL_INTERVAL_S = 0.1
    settings.WEBHOOK_TIMEOUT_S = 5
    delivery_signal.invalidate()
    yield settings
    delivery_signal.invalidate()


@pytest.fixture
async def worker(local_webhooks):
    """The delivery worker on the test's loop, as the server runs it."""
    running = DeliveryWorker()
    task = asyncio.create_task(running.run())
    yield running
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def eventually(check: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Wait until `check()` (sync or async) is truthy; its value, or AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {check}")
        await asyncio.sleep(interval)
