"""Who is on the other end of a WebSocket: an API token, or the browser's session behind an origin check.

The contract: a token (`?token=` or `Authorization: Bearer`) authenticates a script or an agent runtime,
which sends no `Origin`; the session cookie authenticates a browser, and only when the `Origin` header
names one of ALLOWED_HOSTS (otherwise any page on the web could open a socket with the operator's
cookie). A connection with an `Origin` that is not allowed is refused at the handshake either way.
Consumers decide what an anonymous user gets (an error message and a close code).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs, urlparse

from channels.auth import AuthMiddlewareStack
from channels.security.websocket import AllowedHostsOriginValidator, WebsocketDenier
from django.contrib.auth.models import AnonymousUser

from eventbus_project.async_views import off_shared_thread

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


def _user_for_token(raw_token: str) -> Any:
    from rest_framework.exceptions import AuthenticationFailed

    from events.auth import authenticate_token

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
        # Channels' own check of Origin against ALLOWED_HOSTS; only its valid_origin() is used.
        self.origins = AllowedHostsOriginValidator(inner)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        origin = _header(scope, b"origin")
        parsed_origin = None
        if origin is not None:
            try:
                parsed_origin = urlparse(origin)
            except ValueError:
                parsed_origin = None
            if parsed_origin is None or not self.origins.valid_origin(parsed_origin):
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
