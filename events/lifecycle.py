"""Ties the bus to the server's event loop: bound when Daphne starts, drained when it stops cleanly."""

import asyncio
import logging
import sys

from .conf import bus_settings
from .event_bus import event_bus

logger = logging.getLogger("events")
_installed = False


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

    def bind() -> None:
        # Sync views publish from worker threads; binding now makes their events run on the server loop
        # rather than on a loop of the bus's own.
        event_bus.bind(loop)

    def drain() -> defer.Deferred:
        timeout = bus_settings().shutdown_timeout
        pending = event_bus.get_stats()["pending"]
        if pending:
            logger.info("draining %d events before shutdown", pending)
        return defer.Deferred.fromFuture(
            asyncio.ensure_future(event_bus.shutdown(timeout=timeout), loop=loop)
        )

    reactor.callWhenRunning(bind)
    reactor.addSystemEventTrigger("before", "shutdown", drain)  # type: ignore[arg-type]
