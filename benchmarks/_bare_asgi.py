"""The anchor of benchmarks/ingest_single.py: a bare ASGI app on the same Daphne, with no Django at all.

`POST` anywhere: reads the whole body (every `http.request` message until `more_body` is false), takes
the event's `event_id` from its JSON (one `json.loads`, so the anchor does the least an ingest must do:
read and decode) and answers 201 with a small JSON body shaped like the app's answer
(`{"positions": [n], "event_ids": [id], "position": n}`, n a counter of this process). `GET /healthz`
answers 200 (benchmarks._common.daphne waits for it); anything else 404.

No authentication, no validation, no store: it measures what Daphne (Twisted, the HTTP parser, the
ASGI hand-over) costs per request on this machine, against which the app's `POST /api/events/` is
compared. Serve it with `python -m daphne benchmarks._bare_asgi:application` from the repository root.
For benchmarks only.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_positions = itertools.count(1)
_JSON_HEADERS = [(b"content-type", b"application/json")]


async def _answer(send: Send, status: int, body: bytes) -> None:
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def application(scope: Scope, receive: Receive, send: Send) -> None:
    """201 with a small JSON to any POST (its body read and decoded); 200 to GET /healthz."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    if scope["method"] == "GET" and scope["path"] == "/healthz":
        await _answer(send, 200, b'{"status": "ok"}')
        return
    if scope["method"] != "POST":
        await _answer(send, 404, b'{"detail": "not found"}')
        return
    try:
        event = json.loads(b"".join(chunks))
        event_id = str(event["event_id"]) if isinstance(event, dict) else ""
    except (ValueError, KeyError):
        await _answer(send, 400, b'{"detail": "malformed"}')
        return
    position = next(_positions)
    body = json.dumps({"positions": [position], "event_ids": [event_id], "position": position}).encode()
    await _answer(send, 201, body)
