"""Ties the bus to the server's event loop: bound when Daphne starts, drained when it stops cleanly."""

import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from .conf import bus_settings
from .event_bus import event_bus

logger = logging.getLogger("events")
_installed = False
# Coroutine functions the server runs for as long as it runs (the approval sweeper).
_background_tasks: list[Callable[[], Coroutine[Any, Any, None]]] = []


def run_in_server(start: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run `await start()` on the server's loop from start-up to shutdown (under Daphne)."""
    if start not in _background_tasks:
        _background_tasks.append(start)


def install_server_hooks() -> None:
    """Under Daphne (Twisted's asyncio reactor), bind the bus to the server loop and drain it at shutdown."""
    global _installed
    if _installed or "twisted.internet.reactor" not in sys.modules:
        return
    from twisted.internet import defer, reactor

    loop = getattr(reactor, "_asyncioEventloop", None)
    if loop is None:  # not the asyncio reactor: the bus binds to whatever loop publishes first
        return
    _installed = True

    tasks: list[asyncio.Task[None]] = []

    def bind() -> None:
        # Sync views publish from worker threads; binding now makes their events run on the server loop
        # rather than on a loop of the bus's own.
        event_bus.bind(loop)
        for start in _background_tasks:
            tasks.append(loop.create_task(start()))

    def drain() -> defer.Deferred:
        for task in tasks:
            task.cancel()
        timeout = bus_settings().shutdown_timeout
        pending = event_bus.get_stats()["pending"]
        if pending:
            logger.info("draining %d events before shutdown", pending)
        return defer.Deferred.fromFuture(
            asyncio.ensure_future(event_bus.shutdown(timeout=timeout), loop=loop)
        )

    reactor.callWhenRunning(bind)
    reactor.addSystemEventTrigger("before", "shutdown", drain)  # type: ignore[arg-type]
