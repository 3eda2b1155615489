"""GET /healthz: can this server reach its database and Redis?

The server uses no Channels layer (the live feeds follow the store, sign-outs travel on the bus), so
`channel_layer` is always "disabled": the key stays for the clients that read it.

It answers within CHECK_TIMEOUT_S (checks run side by side, each bounded), so a load balancer sees a 503
within 2 s of asking while the database is down. The database is checked the way requests use it: a
pooled connection (the pool checks it as it hands it out) and `SELECT 1`. The thread that waits on an
unreachable database cannot be cancelled; it ends with the pool's own timeout (DATABASE_POOL_TIMEOUT).
"""

import asyncio
import logging
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from core.outage import check_pool_soon

logger = logging.getLogger("events")
# Each check's bound; they run side by side, so /healthz answers within about this (the contract: 2 s).
CHECK_TIMEOUT_S = 1.5


def _ping_database() -> None:
    close_old_connections()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        # This runs on a pool thread no request cycle cleans up after.
        connection.close()


async def _check_database() -> None:
    # thread_sensitive=False: a slow database must not hold the thread every sync view shares.
    await sync_to_async(_ping_database, thread_sensitive=False)()


async def _check_redis() -> None:
    import redis.asyncio as redis

    client = redis.from_url(str(settings.REDIS_URL), socket_connect_timeout=CHECK_TIMEOUT_S)
    try:
        await client.ping()  # type: ignore[misc]  # redis-py types ping() as sync-or-async
    finally:
        await client.aclose()


async def _run(name: str, check: Any) -> str:
    try:
        await asyncio.wait_for(check(), CHECK_TIMEOUT_S)
    except Exception as error:
        reason = str(error) or "timed out"
        logger.warning("health check %s failed: %s: %s", name, type(error).__name__, reason)
        if name == "database":
            # Have the pool drop the connections the outage broke, so serving resumes at once after it.
            check_pool_soon()
        return "error"
    return "ok"


async def _disabled() -> str:
    return "disabled"


@require_GET
async def healthz(request: HttpRequest) -> JsonResponse:
    """200 with every dependency "ok" (Redis "disabled" when not configured), 503 when one is down."""
    redis_check = _run("redis", _check_redis) if settings.REDIS_URL else _disabled()
    # Side by side: the answer comes within CHECK_TIMEOUT_S, however many dependencies are down.
    database, redis = await asyncio.gather(_run("database", _check_database), redis_check)
    body = {"database": database, "channel_layer": "disabled", "redis": redis}
    healthy = all(value in ("ok", "disabled") for value in body.values())
    return JsonResponse(body, status=200 if healthy else 503)
