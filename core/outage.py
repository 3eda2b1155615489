"""While the database is unreachable: 503 `store_unavailable` with Retry-After, never a 500.

The contract: while the database cannot be reached, every API answers 503
`{"detail": ..., "code": "store_unavailable"}` with a `Retry-After` header, quickly (the pool's
timeout, DATABASE_POOL_TIMEOUT, bounds the wait for a connection), and serves again as soon as the
database is back. The pieces:

- `is_outage(error)`: whether an exception means the database cannot be reached (a refused or lost
  connection, the pool's timeout) rather than a bug (an IntegrityError, a ProgrammingError stay 500s);
- the DRF exception handler (core.errors) and the agents' long-poll (hitl.longpoll)
  answer such errors with `store_unavailable_body()` and `RETRY_AFTER_S`;
- StoreOutageMiddleware does the same for Django views outside DRF: JSON under /api/, a plain 503 page
  elsewhere;
- `note_outage()` logs it and has the pool check its idle connections in the background, so the ones
  the outage broke are replaced at once rather than handed to the first requests after recovery.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.db import InterfaceError, OperationalError, connections
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse

logger = logging.getLogger("events")

CODE = "store_unavailable"
RETRY_AFTER_S = 1
DETAIL = "The database is unreachable; try again shortly."
# How often at most an outage is logged (each request during one would log it otherwise).
LOG_EVERY_S = 5.0

_OUTAGE_ERRORS: tuple[type[BaseException], ...] = (OperationalError, InterfaceError)
try:  # psycopg's own errors, for code that runs outside Django's wrappers (and the pool's PoolTimeout)
    import psycopg

    _OUTAGE_ERRORS += (psycopg.OperationalError, psycopg.InterfaceError)
except ImportError:  # pragma: no cover - SQLite-only installations
    pass

_state_lock = threading.Lock()
_last_logged = 0.0
_checking = False


def is_outage(error: BaseException) -> bool:
    """Whether `error` means the database cannot be reached (or answer) right now.

    Django's OperationalError and InterfaceError (a refused or lost connection, a connection the server
    closed, psycopg_pool's PoolTimeout, SQLite's "database is locked"), and psycopg's own. Other
    database errors (integrity, programming, data) are about the query: bugs, left to be 500s.
    """
    return isinstance(error, _OUTAGE_ERRORS)


def store_unavailable_body(detail: str = DETAIL) -> dict[str, str]:
    """The API's error body during an outage."""
    return {"detail": detail, "code": CODE}


def retry_after_headers() -> dict[str, str]:
    return {"Retry-After": str(RETRY_AFTER_S)}


def note_outage(error: BaseException, where: str = "") -> None:
    """Log the outage (at most every LOG_EVERY_S) and have the pool drop its broken idle connections."""
    global _last_logged
    now = time.monotonic()
    with _state_lock:
        log = now - _last_logged >= LOG_EVERY_S
        if log:
            _last_logged = now
    if log:
        place = f" ({where})" if where else ""
        logger.warning("database unreachable%s: %s: %s", place, type(error).__name__, error)
    check_pool_soon()


def check_pool_soon() -> None:
    """Check the idle pooled connections in a background thread (one at a time), discarding broken ones.

    The pool checks each connection it hands out too (CONN_HEALTH_CHECKS), but backs off between failed
    checks: with several connections the outage broke, the first request after recovery would wait.
    """
    global _checking
    pool = getattr(connections["default"], "pool", None)
    if pool is None:
        return
    with _state_lock:
        if _checking:
            return
        _checking = True

    def check() -> None:
        global _checking
        try:
            pool.check()
        except Exception as error:  # the pool closed meanwhile (shutdown), or the check itself failed
            logger.debug("pool check failed: %s", error)
        finally:
            with _state_lock:
                _checking = False

    threading.Thread(target=check, name="db-pool-check", daemon=True).start()


def outage_response(request: HttpRequest) -> HttpResponse:
    """503 for `request` during an outage: the API's JSON under /api/, a plain page elsewhere."""
    if request.path.startswith("/api/"):
        response: HttpResponse = JsonResponse(store_unavailable_body(), status=503)
    else:
        response = HttpResponse(
            "<!doctype html><title>Service unavailable</title>"
            "<h1>Service unavailable</h1><p>The database is unreachable; try again shortly.</p>",
            status=503,
            content_type="text/html; charset=utf-8",
        )
    for name, value in retry_after_headers().items():
        response[name] = value
    return response


class StoreOutageMiddleware:
    """A view (outside DRF, whose exception handler answers for itself) that meets an unreachable
    database answers 503, not 500: JSON `store_unavailable` under /api/, a plain page elsewhere."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if self.is_async:
            return self.__acall__(request)
        response: HttpResponseBase = self.get_response(request)
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        response: HttpResponseBase = await self.get_response(request)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not is_outage(exception):
            return None
        note_outage(exception, request.path)
        return outage_response(request)
