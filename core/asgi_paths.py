"""What the small ASGI paths beside Django's request cycle share (the agents' long-poll, single-event
ingest, requests for approval): the Bearer token of a request, whether Django would redirect it to
HTTPS or refuse its Host, a JSON answer, the project's error bodies, and the request observers (the
Prometheus latency histogram sees these requests too).

Why such paths exist: under ASGI, Django gives each request a thread-sensitive context, and its sync
middleware hop to a thread per request; an agent that posts one event per step, or waits on a decision,
should cost neither (docs/benchmarks.md has the figures).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from django.conf import settings
from django.http.request import split_domain_port, validate_host
from rest_framework import exceptions

from .errors import ApplicationError, PayloadTooLarge, error_body
from .outage import is_outage, note_outage, retry_after_headers, store_unavailable_body

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

KEYWORD = "bearer"
# Called with (view name, method, status, seconds) for each request a path answers itself.
request_observers: list[Callable[[str, str, int, float], None]] = []


def bearer_token(scope: Scope) -> str | None:
    """The raw token of `Authorization: Bearer <token>`, or None."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            parts = value.decode("latin-1").split()
            if len(parts) == 2 and parts[0].lower() == KEYWORD:
                return parts[1]
            return None
    return None


def header(scope: Scope, wanted: bytes) -> str | None:
    """A request header's value (latin-1), or None."""
    for name, value in scope.get("headers", ()):
        if name == wanted:
            return bytes(value).decode("latin-1")
    return None


def _secure(scope: Scope) -> bool:
    if scope.get("scheme") == "https":
        return True
    proxy = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy:
        name, value = proxy
        wanted = name.removeprefix("HTTP_").replace("_", "-").lower().encode()
        return header(scope, wanted) == value
    return False


def host_allowed(scope: Scope) -> bool:
    """Whether Django would take the request's Host (ALLOWED_HOSTS, as HttpRequest.get_host checks it);
    False also when there is no Host header to check here (leave the request to Django then)."""
    host = header(scope, b"x-forwarded-host") if getattr(settings, "USE_X_FORWARDED_HOST", False) else None
    if host is None:
        host = header(scope, b"host")
    if not host:
        return False
    allowed = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]  # Django's own default under DEBUG
    domain, _ = split_domain_port(host)
    return bool(domain) and validate_host(domain, allowed)


def redirects_to_https(scope: Scope) -> bool:
    """Whether Django's SecurityMiddleware would redirect this request to HTTPS (leave it to Django)."""
    return bool(getattr(settings, "SECURE_SSL_REDIRECT", False)) and not _secure(scope)


async def respond(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Answer `body` as JSON."""
    content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(content)).encode()),
                (b"x-content-type-options", b"nosniff"),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": content})


async def respond_error(send: Send, error: BaseException) -> int:
    """Answer `error` as the API does (the same bodies, statuses and headers as the DRF views); its status.

    Anything that is neither the project's error, DRF's, nor a database outage is re-raised: a bug.
    """
    if isinstance(error, ApplicationError):
        body = {"detail": error.message, "code": error.code, **error.extra}
        headers = [(name.lower().encode(), value.encode()) for name, value in error.headers.items()]
        await respond(send, error.status, body, headers)
        return error.status
    if isinstance(error, exceptions.AuthenticationFailed | exceptions.NotAuthenticated):
        await respond(
            send,
            401,
            {"detail": str(error.detail), "code": "invalid_token"},
            [(b"www-authenticate", b'Bearer realm="api"')],
        )
        return 401
    if isinstance(error, exceptions.APIException):
        status = int(error.status_code)
        await respond(send, status, error_body(error))
        return status
    if is_outage(error):
        note_outage(error)
        headers = [(name.lower().encode(), value.encode()) for name, value in retry_after_headers().items()]
        await respond(send, 503, store_unavailable_body(), headers)
        return 503
    raise error


def observe(view: str, method: str, status: int, started: float) -> None:
    """Tell the request observers how a request answered here went."""
    seconds = time.perf_counter() - started
    for observer in request_observers:
        observer(view, method, status, seconds)


async def read_body(receive: Receive, limit: int, declared: int | None) -> bytes:
    """The request's body, at most `limit` bytes (413 beyond, before reading it when declared)."""
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"The body has {declared} bytes; at most {limit} are accepted.")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionAbortedError("the client went away before sending its body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The body has more than {limit} bytes; at most {limit} are accepted.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
