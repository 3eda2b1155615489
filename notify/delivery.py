"""The webhook delivery worker: one task per enabled endpoint, in the server's loop.

Each task holds its endpoint's lease (one process delivers to an endpoint at a time), queues the stored
events after its endpoint's queued position as outbox rows (notify.services.webhook_enqueue), reads the
outbox in pages in position order, and sends one event at a time: the next only after the receiver answered
2xx, so the receiver sees them in position order, each at least once (a crash before the outcome is
recorded sends it again). A failure backs that delivery off (exponential, with jitter) and holds the
endpoint's later events behind it, until WEBHOOK_RETRY_HOURS have passed, when the endpoint is
disabled. A slow or dead receiver holds only its own task (timeouts), never the store or the others.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from channels.db import database_sync_to_async

from .conf import notify_settings
from .selectors import enabled_endpoint_ids, webhook_page
from .services import Attempt, lease_claim, lease_release, webhook_attempts_record, webhook_enqueue
from .webhooks import RESPONSE_EXCERPT_BYTES, delivery_signal, signed_headers, url_refusal

logger = logging.getLogger("notify")

LEASE_S = 30.0
URL_CHECK_S = 60.0


def _off_thread(fn: Any) -> Any:
    return database_sync_to_async(fn, thread_sensitive=False)


class DeliveryWorker:
    """Starts and stops a task per enabled endpoint; wakes them after commits."""

    def __init__(self) -> None:
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._wakes: dict[int, asyncio.Event] = {}
        self._changed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def wake(self) -> None:
        """Something may be waiting to be sent (thread-safe; cheap when nothing runs)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._wake_all)
        except RuntimeError:
            pass  # the loop is closing

    def _wake_all(self) -> None:
        for event in self._wakes.values():
            event.set()
        if self._changed is not None:
            self._changed.set()

    async def run(self) -> None:
        """Deliver until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        delivery_signal.on_commit(self.wake)
        try:
            while True:
                try:
                    wanted = set(await _off_thread(enabled_endpoint_ids)())
                except Exception:
                    logger.exception("webhooks: could not read the endpoints")
                    wanted = set(self._tasks)
                for endpoint_id, task in list(self._tasks.items()):
                    if task.done():
                        self._tasks.pop(endpoint_id)
                        self._wakes.pop(endpoint_id, None)
                    elif endpoint_id not in wanted:
                        task.cancel()
                for endpoint_id in wanted - set(self._tasks):
                    self._wakes[endpoint_id] = asyncio.Event()
                    self._tasks[endpoint_id] = asyncio.create_task(
                        self._serve(endpoint_id), name=f"webhook-{endpoint_id}"
                    )
                self._changed.clear()
                try:
                    await asyncio.wait_for(
                        self._changed.wait(), notify_settings().webhook_poll_interval_s * 5
                    )
                except TimeoutError:
                    pass
        finally:
            delivery_signal.on_commit(None)
            for task in self._tasks.values():
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            self._tasks.clear()
            self._wakes.clear()

    async def _sleep(self, endpoint_id: int, seconds: float) -> None:
        wake = self._wakes.get(endpoint_id)
        if wake is None:
            await asyncio.sleep(seconds)
            return
        try:
            await asyncio.wait_for(wake.wait(), max(0.0, seconds))
        except TimeoutError:
            pass
        wake.clear()

    async def _serve(self, endpoint_id: int) -> None:
        config = notify_settings()
        name = f"webhook:{endpoint_id}"
        held_until = 0.0
        url_checked: tuple[str, float, str | None] = ("", 0.0, None)
        timeout = httpx.Timeout(config.webhook_timeout_s)
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            try:
                while True:
                    try:
                        if time.monotonic() > held_until - LEASE_S / 2:
                            if not await _off_thread(lease_claim)(name=name, owner=self.owner, ttl_s=LEASE_S):
                                held_until = 0.0
                                await self._sleep(endpoint_id, LEASE_S / 3)
                                continue
                            held_until = time.monotonic() + LEASE_S
                        wake = self._wakes.get(endpoint_id)
                        if wake is not None:
                            wake.clear()  # what commits from now on is in this page or wakes the next
                        await _off_thread(webhook_enqueue)(
                            endpoint_id=endpoint_id, limit=config.webhook_page_size
                        )
                        page = await _off_thread(webhook_page)(
                            endpoint_id=endpoint_id, limit=config.webhook_page_size
                        )
                        if page is None:
                            return  # disabled or deleted
                        if not page["items"]:
                            await self._sleep(endpoint_id, config.webhook_poll_interval_s)
                            continue
                        url = page["url"]
                        if url_checked[0] != url or time.monotonic() - url_checked[1] > URL_CHECK_S:
                            url_checked = (url, time.monotonic(), await url_refusal(url))
                        pause = await self._deliver_page(client, endpoint_id, page, url_checked[2])
                        if pause is None:
                            return  # disabled after its retry window
                        if pause > 0:
                            await self._sleep(endpoint_id, pause)
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        logger.exception(
                            "webhooks: endpoint %s's worker failed; again in a second", endpoint_id
                        )
                        await asyncio.sleep(1.0)
            finally:
                if held_until:
                    try:
                        await asyncio.shield(_off_thread(lease_release)(name=name, owner=self.owner))
                    except Exception:
                        pass  # it expires by itself

    async def _deliver_page(
        self, client: httpx.AsyncClient, endpoint_id: int, page: dict[str, Any], refusal: str | None
    ) -> float | None:
        """Send the page's rows in order until one fails; record the outcomes. Returns how long to wait
        before the next page (0: at once), or None when the endpoint has just been disabled."""
        delivered: list[Attempt] = []
        failed: Attempt | None = None
        pause = 0.0
        now = datetime.now(UTC)
        for item in page["items"]:
            due = item["next_attempt_at"]
            if due is not None and due > now:
                pause = (due - now).total_seconds()
                break
            if item["body"] is None:
                # Purged from the store meanwhile: nothing left to send.
                delivered.append(
                    Attempt(item["id"], now, None, 0.0, True, error="the event is no longer stored")
                )
                continue
            if refusal is not None:
                failed = Attempt(item["id"], datetime.now(UTC), None, 0.0, False, error=refusal)
                break
            attempt = await self._send(client, page, item)
            if not attempt.succeeded:
                failed = attempt
                break
            delivered.append(attempt)
            now = attempt.attempted_at
        if delivered or failed is not None:
            reason = await _off_thread(webhook_attempts_record)(
                endpoint_id=endpoint_id, delivered=delivered, failed=failed
            )
            if reason is not None:
                return None
        return pause

    async def _send(self, client: httpx.AsyncClient, page: dict[str, Any], item: dict[str, Any]) -> Attempt:
        body: bytes = item["body"]
        started = time.perf_counter()
        attempted_at = datetime.now(UTC)
        headers = signed_headers(page["secret"], str(item["event_id"]), body, attempted_at)
        try:
            async with client.stream("POST", page["url"], content=body, headers=headers) as response:
                excerpt = b""
                async for chunk in response.aiter_raw():
                    excerpt += chunk
                    if len(excerpt) >= RESPONSE_EXCERPT_BYTES:
                        break
            latency = (time.perf_counter() - started) * 1000
            ok = 200 <= response.status_code < 300
            return Attempt(
                item["id"],
                attempted_at,
                response.status_code,
                latency,
                ok,
                error="" if ok else f"HTTP {response.status_code}",
                response_excerpt=excerpt[:RESPONSE_EXCERPT_BYTES].decode("utf-8", "replace"),
            )
        except httpx.HTTPError as error:
            latency = (time.perf_counter() - started) * 1000
            return Attempt(
                item["id"],
                attempted_at,
                None,
                latency,
                False,
                error=f"{type(error).__name__}: {error}"[:1000],
            )


delivery_worker = DeliveryWorker()
