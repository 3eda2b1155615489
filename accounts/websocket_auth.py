"""Who is on the other end of a WebSocket: an API token, or the browser's session behind an origin check.

The contract: a token (`?token=` or `Authorization: Bearer`) authenticates a script or an agent runtime,
which sends no `Origin`; the session cookie authenticates a browser, and only when the `Origin` header
is this server's own origin or one of CSRF_TRUSTED_ORIGINS (otherwise any page on the web could open a
socket with the operator's cookie). As Django's CSRF check does for HTTP (CONTRACT.md, "The trust
boundary"), the origin compares scheme, host and port: the own origin is the handshake's `Host` (one of
ALLOWED_HOSTS) with the scheme of the connection (ws: http, wss: https, or https where
SECURE_PROXY_SSL_HEADER says so). A connection with an `Origin` that is not allowed is refused at the
handshake either way.
Consumers decide what an anonymous user gets (an error message and a close code).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from channels.auth import AuthMiddlewareStack
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain

from core.async_views import off_shared_thread

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            try:
                return bytes(value).decode("latin1")
            except (UnicodeDecodeError, TypeError):
                return None
    return None


def token_from_scope(scope: Scope) -> str | None:
    """The raw API token of the connection: `?token=...` or an `Authorization: Bearer ...` header."""
    authorization = _header(scope, b"authorization")
    if authorization:
        parts = authorization.split()
        if len(parts) == 2 and parts[0].lower() == "bearer":
            return parts[1]
    try:
        query = parse_qs(bytes(scope.get("query_string", b"")).decode("latin1"))
    except (UnicodeDecodeError, TypeError, ValueError):
        return None
    values = query.get("token")
    return values[0] if values else None


def _is_secure(scope: Scope) -> bool:
    """Whether the browser reached this server over TLS: request.is_secure() for a WebSocket."""
    proxy_header = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy_header:
        header, secure_value = proxy_header
        # HTTP_X_FORWARDED_PROTO -> x-forwarded-proto, as the ASGI handler builds META from headers.
        value = _header(scope, header.removeprefix("HTTP_").replace("_", "-").lower().encode("latin1"))
        if value is not None:
            return value.split(",", 1)[0].strip() == secure_value
    return scope.get("scheme", "ws") in ("wss", "https")


def _own_host(scope: Scope) -> str | None:
    """request.get_host() for a WebSocket: the `Host` of the handshake if ALLOWED_HOSTS names it."""
    host = None
    if getattr(settings, "USE_X_FORWARDED_HOST", False):
        host = _header(scope, b"x-forwarded-host")
    if host is None:
        host = _header(scope, b"host")
    if host is None:
        server = scope.get("server")
        if not server or server[1] is None:
            return None
        name, port = server
        host = name if str(port) == ("443" if _is_secure(scope) else "80") else f"{name}:{port}"
    allowed_hosts = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed_hosts:
        allowed_hosts = [".localhost", "127.0.0.1", "[::1]"]
    domain, _ = split_domain_port(host)
    if domain and validate_host(domain, allowed_hosts):
        return host
    return None


def origin_allowed(scope: Scope, origin: str) -> bool:
    """Whether a browser page at `origin` may open this socket: Django's CSRF origin check
    (CsrfViewMiddleware._origin_verified) for the handshake. Scheme, host and port must all match."""
    host = _own_host(scope)
    if host is not None and origin == f"{'https' if _is_secure(scope) else 'http'}://{host}":
        return True
    trusted = settings.CSRF_TRUSTED_ORIGINS
    if origin in (entry for entry in trusted if "*" not in entry):
        return True
    try:
        parsed = urlsplit(origin)
    except ValueError:
        return False
    return any(
        parsed.scheme == wildcard.scheme and is_same_domain(parsed.netloc, wildcard.netloc.lstrip("*"))
        for wildcard in (urlsplit(entry) for entry in trusted if "*" in entry)
    )


def _user_for_token(raw_token: str) -> Any:
    from rest_framework.exceptions import AuthenticationFailed

    from accounts.auth import authenticate_token

    try:
        user, _ = authenticate_token(raw_token)
    except AuthenticationFailed:
        return AnonymousUser()
    return user


class WebSocketAuthMiddleware:
    """Sets scope["user"] (and scope["auth"] = "token" or "session") for the inner application."""

    def __init__(self, inner: ASGIApp) -> None:
        self.inner = inner
        self.session_app = AuthMiddlewareStack(inner)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        origin = _header(scope, b"origin")
        if origin is not None and not origin_allowed(scope, origin):
            await WebsocketDenier()(scope, receive, send)
            return
        raw_token = token_from_scope(scope)
        if raw_token is not None:
            user = await off_shared_thread(_user_for_token)(raw_token)
            await self.inner(dict(scope, user=user, auth="token"), receive, send)
            return
        if origin is None:
            # A cookie without an Origin could come from anywhere: it authenticates nobody.
            await self.inner(dict(scope, user=AnonymousUser(), auth="none"), receive, send)
            return
        await self.session_app(dict(scope, auth="session"), receive, send)
