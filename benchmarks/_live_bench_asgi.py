"""The ASGI application benchmarks/live_fanout.py serves: the project's, plus a bare Channels consumer.

`/ws/bare/?group=NAME` is what Channels itself offers for a live feed, and nothing more: a consumer that
joins the group NAME on the channel layer of the settings (REDIS_CHANNEL_LAYER) when it connects and
sends the `text` of every `{"type": "bench.event", "text": ...}` the group receives as one text frame. No
authentication, no store, no filters: it is the anchor the app's `/ws/events/` is compared with.

One addition, so that a client that stops reading stops the consumer taking messages off the layer (as
the app's consumer does, events.consumers.LiveConsumer.wait_for_client): while more than
TRANSPORT_HIGH_WATER bytes wait in Daphne's socket buffer, it does not send. Without it Twisted buffers
every frame for a client that does not read, without bound, whatever the layer, and the layer is never
asked to hold anything; with it, what piles up is the layer's to hold or drop, which is what the
benchmark's slow-client check measures. For a client that reads, it costs a few attribute reads a frame.

Serve it with `python -m daphne benchmarks._live_bench_asgi:application` from the repository root. For
benchmarks only: it is not in the project's routing and answers anyone who connects.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncWebsocketConsumer

from eventbus_project.asgi import application as project_application
from events.consumers import transport_backlog  # the same measure the app's consumer waits on

BARE_PATH = "/ws/bare/"
DEFAULT_GROUP = "bench-live"
TRANSPORT_HIGH_WATER = 256 * 1024


class BareGroupConsumer(AsyncWebsocketConsumer):
    """Joins `?group=` on connect and forwards each bench.event's text as a frame."""

    async def connect(self) -> None:
        query = parse_qs(bytes(self.scope.get("query_string", b"")).decode("latin-1"))
        group = (query.get("group") or [DEFAULT_GROUP])[-1]
        await self.channel_layer.group_add(group, self.channel_name)
        self.groups.append(group)  # websocket_disconnect leaves it
        await self.accept()

    async def bench_event(self, message: dict[str, Any]) -> None:
        backlog = transport_backlog(self.base_send)
        while backlog is not None and backlog > TRANSPORT_HIGH_WATER:
            await asyncio.sleep(0.02)
            backlog = transport_backlog(self.base_send)
        await self.send(text_data=message["text"])


_bare = BareGroupConsumer.as_asgi()


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The project's application, with /ws/bare/ in front of its WebSocket routes."""
    if scope["type"] == "websocket" and scope.get("path") == BARE_PATH:
        await _bare(scope, receive, send)
    else:
        await project_application(scope, receive, send)
