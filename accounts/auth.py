"""`Authorization: Bearer <token>` for agent runtimes and scripts, against ApiToken's SHA-256 digests.

An agent that publishes one event per step authenticates on every request: who a token is and what it
may do are kept in memory for API_TOKEN_CACHE_S seconds (5 by default), so a request costs no query.
Revoking a token, deactivating its user or changing their groups or permissions empties the cache of
this process at once (signals, connected in AccountsConfig.ready) and, with Redis, of the others (the
events app relays the change); without Redis another process sees it within API_TOKEN_CACHE_S.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from .models import ApiToken
from .selectors import api_token_get_active
from .services import api_token_mark_used

KEYWORD = "bearer"


@dataclass(frozen=True)
class Identity:
    """Who a token is, as the cache keeps it: the user (its permissions loaded) and the token."""

    user: Any
    token: ApiToken
    permissions: frozenset[str]
    until: float

    def has_perm(self, permission: str) -> bool:
        return self.user.is_active and (self.user.is_superuser or permission in self.permissions)


_cache: dict[str, Identity] = {}
_cache_lock = threading.Lock()
MAX_CACHED_TOKENS = 10_000


def _ttl() -> float:
    return float(getattr(settings, "API_TOKEN_CACHE_S", 5.0))


def _key(raw_token: str) -> str:
    return hashlib.sha256(raw_token.encode()).hexdigest()


def cached_identity(raw_token: str) -> Identity | None:
    """The cached identity of `raw_token` if still fresh (no query: safe on the event loop)."""
    identity = _cache.get(_key(raw_token))
    if identity is None or identity.until < time.monotonic():
        return None
    return identity


def forget_tokens(*args: Any, **kwargs: Any) -> None:
    """Empty the cache (a token was revoked, a user or a group changed); usable as a signal receiver."""
    with _cache_lock:
        _cache.clear()


def token_identity(raw_token: str) -> Identity:
    """The identity of an active raw token, from the cache or the database (then cached), recording its
    use at most once a minute; AuthenticationFailed otherwise. Synchronous on a miss: async callers try
    `cached_identity` first and run this in a worker thread."""
    identity = cached_identity(raw_token)
    if identity is None:
        token = api_token_get_active(raw_token=raw_token)
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked token.", code="invalid_token")
        user = token.user
        ttl = _ttl()
        if ttl > 0 and user.is_active:
            # Loaded once here, so that the user's has_perm answers from memory while it is cached.
            permissions = frozenset(user.get_all_permissions())
        else:
            permissions = frozenset()
        identity = Identity(user=user, token=token, permissions=permissions, until=time.monotonic() + ttl)
        if ttl > 0:
            with _cache_lock:
                if len(_cache) >= MAX_CACHED_TOKENS:
                    _cache.clear()
                _cache[_key(raw_token)] = identity
    api_token_mark_used(token=identity.token)
    return identity


def authenticate_token(raw_token: str) -> tuple[Any, ApiToken]:
    """(user, token) for an active raw token, recording its use; AuthenticationFailed otherwise.

    Synchronous (a query when the token is not cached): async callers run it in a worker thread.
    """
    identity = token_identity(raw_token)
    return identity.user, identity.token


class BearerTokenAuthentication(BaseAuthentication):
    """DRF authentication by API token; a request without a Bearer header is left to the others."""

    def authenticate(self, request: Request) -> tuple[Any, ApiToken] | None:
        header = request.headers.get("Authorization", "")
        parts = header.split()
        if not parts or parts[0].lower() != KEYWORD:
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed(
                "Invalid Authorization header: use `Bearer <token>`.", code="invalid_token"
            )
        return authenticate_token(parts[1])

    def authenticate_header(self, request: Request) -> str:
        # Makes DRF answer 401 (not 403) to a request that is not authenticated.
        return 'Bearer realm="api"'


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """The OpenAPI security scheme of BearerTokenAuthentication."""

    target_class = BearerTokenAuthentication
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "An API token: `Bearer ebt_...`"}
