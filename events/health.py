"""GET /healthz: can this server reach its database, its channel layer and Redis?"""

import asyncio
import logging
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import close_old_connections, connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

logger = logging.getLogger("events")
CHECK_TIMEOUT_S = 3.0


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


async def _check_channel_layer() -> None:
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer configured")
    channel = await layer.new_channel("healthz.")
    await layer.send(channel, {"type": "healthz.ping"})
    message = await layer.receive(channel)
    if message.get("type") != "healthz.ping":
        raise RuntimeError(f"channel layer returned {message!r}")


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
        logger.warning("health check %s failed: %s: %s", name, type(error).__name__, error)
        return "error"
    return "ok"


@require_GET
async def healthz(request: HttpRequest) -> JsonResponse:
    """200 with every dependency "ok" (Redis "disabled" when not configured), 503 when one is down."""
    redis_check = _run("redis", _check_redis) if settings.REDIS_URL else None
    database, channel_layer = await asyncio.gather(
        _run("database", _check_database), _run("channel_layer", _check_channel_layer)
    )
    body = {
        "database": database,
        "channel_layer": channel_layer,
        "redis": await redis_check if redis_check is not None else "disabled",
    }
    healthy = all(value in ("ok", "disabled") for value in body.values())
    return JsonResponse(body, status=200 if healthy else 503)
