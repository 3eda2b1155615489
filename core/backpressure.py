"""Backpressure for streamed responses under Daphne: a slow client slows the stream, not the server.

Daphne writes each body message into Twisted's transport at once, so a large streamed response (the
audit export) to a client that reads slowly piles up in the server's memory. Twisted's answer is a
push producer: the transport pauses it while its write buffer is full. This wrapper registers one
for responses that stream (`more_body`) and waits, before each further body message, until the
transport wants more. It uses Daphne's `send` (a partial carrying its twisted.web request); under any
other server it does nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]


class _Flow:
    """A Twisted push producer whose state is an asyncio event."""

    def __init__(self) -> None:
        self.ready = asyncio.Event()
        self.ready.set()

    def pauseProducing(self) -> None:  # noqa: N802 - Twisted's interface
        self.ready.clear()

    def resumeProducing(self) -> None:  # noqa: N802
        self.ready.set()

    def stopProducing(self) -> None:  # noqa: N802 - the connection is gone: never leave the app waiting
        self.ready.set()


def paced(app: ASGIApp) -> ASGIApp:
    """Wrap an HTTP ASGI app so streamed bodies wait for a slow client instead of buffering."""

    async def wrapper(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        request = getattr(send, "args", (None,))[0] if scope.get("type") == "http" else None
        if request is None or not hasattr(request, "registerProducer"):
            await app(scope, receive, send)
            return
        flow = _Flow()
        registered = False

        async def paced_send(message: Message) -> None:
            nonlocal registered
            if message["type"] == "http.response.body":
                if message.get("more_body"):
                    if not registered:
                        request.registerProducer(flow, True)
                        registered = True
                    await flow.ready.wait()
                elif registered:
                    request.unregisterProducer()
                    registered = False
            await send(message)

        try:
            await app(scope, receive, paced_send)
        finally:
            if (
                registered
                and not getattr(request, "finished", True)
                and not getattr(request, "_disconnected", True)
            ):
                request.unregisterProducer()

    return wrapper
