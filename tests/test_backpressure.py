"""Streamed bodies wait while Daphne's transport is full, and only then."""

import asyncio
import functools
from typing import Any

from core.backpressure import paced


class FakeTwistedRequest:
    """What the wrapper uses of Daphne's twisted.web request."""

    def __init__(self) -> None:
        self.producer: Any = None
        self.finished = False
        self._disconnected = False
        self.unregistered = 0

    def registerProducer(self, producer, streaming):  # noqa: N802
        assert streaming
        self.producer = producer

    def unregisterProducer(self):  # noqa: N802
        self.producer = None
        self.unregistered += 1


async def test_a_streamed_body_waits_while_the_transport_is_paused():
    request = FakeTwistedRequest()
    sent: list[bytes] = []

    async def daphne_reply(twisted_request, message):
        if message["type"] == "http.response.body":
            sent.append(message["body"])

    async def streaming_app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for chunk in (b"a", b"b", b"c"):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    app = paced(streaming_app)
    task = asyncio.ensure_future(app({"type": "http"}, None, functools.partial(daphne_reply, request)))
    await asyncio.sleep(0.01)
    assert sent[:3] == [b"a", b"b", b"c"] and request.producer is None and request.unregistered == 1

    # Now with the transport full after the first chunk.
    sent.clear()
    request = FakeTwistedRequest()

    async def reply_then_fill(twisted_request, message):
        await daphne_reply(twisted_request, message)
        if message.get("body") == b"a":
            twisted_request.producer.pauseProducing()

    task = asyncio.ensure_future(app({"type": "http"}, None, functools.partial(reply_then_fill, request)))
    await asyncio.sleep(0.05)
    assert sent == [b"a"] and not task.done()  # waiting for the client
    request.producer.resumeProducing()
    await asyncio.wait_for(task, 1)
    assert sent == [b"a", b"b", b"c", b""] and request.unregistered == 1


async def test_other_servers_are_left_alone():
    calls: list[str] = []

    async def app(scope, receive, send):
        calls.append("app")
        await send({"type": "http.response.body", "body": b"x", "more_body": True})

    async def plain_send(message):
        calls.append(message["type"])

    await paced(app)({"type": "http"}, None, plain_send)
    assert calls == ["app", "http.response.body"]
