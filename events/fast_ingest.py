"""`POST /api/events/` from an agent's token, answered beside Django's request cycle.

An agent runtime that publishes one event per step posts one event per request. Through Django under
ASGI, each such request paid a thread of its own for the sync middleware, DRF's `initial()` with three
queries for the token and its permissions, and the rendering: about 8 ms of CPU for a few microseconds
of work (docs/benchmarks.md). This ASGI wrapper answers those requests itself: the token's identity
comes from accounts.auth's cache (a query only on a miss, in a worker thread), the body goes through the
same entrance (events.ingest) and the same service (events.services.events_publish) as the DRF view,
and the answers, errors included, are the same. Everything else (GET, session cookies, a query string,
plain HTTP when HTTPS is required) is left to Django.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from channels.db import database_sync_to_async
from rest_framework import exceptions

from accounts.auth import Identity, cached_identity, token_identity
from accounts.services import TOKEN_USE_RESOLUTION
from core.asgi_paths import (
    ASGIApp,
    Receive,
    Scope,
    Send,
    bearer_token,
    header,
    host_allowed,
    observe,
    read_body,
    redirects_to_https,
    respond,
    respond_error,
)

from .conf import max_body_bytes
from .ingest import events_from_body
from .perms import PUBLISH_EVENTS
from .services import events_publish

PATH = "/api/events/"
VIEW_NAME = "events"  # the URL name the DRF view has: one series in the latency histogram
# Bodies larger than this are parsed in a worker thread, so the event loop never stalls on one.
INLINE_PARSE_BYTES = 64 * 1024


def wants_fast_path(scope: Scope) -> str | None:
    """The raw token of a Bearer `POST /api/events/` this path answers; None for Django to serve."""
    if scope.get("type") != "http" or scope.get("method") != "POST" or scope.get("path") != PATH:
        return None
    if scope.get("query_string"):
        return None  # the URL's entrance checks (core.middleware) are Django's
    if redirects_to_https(scope):
        return None  # Django redirects to HTTPS
    if not host_allowed(scope):
        return None  # Django answers a Host outside ALLOWED_HOSTS with its 400
    return bearer_token(scope)


def _fresh(identity: Identity | None) -> bool:
    # A cached identity whose use was recorded within the minute needs no write: no thread at all.
    if identity is None:
        return False
    used = identity.token.last_used_at
    return used is not None and (time.time() - used.timestamp()) < TOKEN_USE_RESOLUTION.total_seconds()


async def _identity(raw_token: str) -> Identity:
    identity = cached_identity(raw_token)
    if not _fresh(identity):
        identity = await database_sync_to_async(token_identity, thread_sensitive=False)(raw_token)
    assert identity is not None
    return identity


def _content_type(scope: Scope) -> str:
    value = header(scope, b"content-type") or ""
    return value.split(";", 1)[0].strip().lower()


def _declared_length(scope: Scope) -> int | None:
    raw = header(scope, b"content-length")
    if raw is None:
        return None
    if not raw.isdigit():
        raise exceptions.ParseError(f"Content-Length {raw!r} is not a number.")
    return int(raw)


async def _answer(scope: Scope, receive: Receive, send: Send, raw_token: str) -> int:
    limit = max_body_bytes()
    declared = _declared_length(scope)
    if declared is not None and declared > limit:
        # Before authenticating, as the DRF view: refusing an oversized body reads none of it.
        await read_body(receive, limit, declared)
    identity = await _identity(raw_token)
    if not identity.has_perm(PUBLISH_EVENTS):
        raise exceptions.PermissionDenied(f"POST {PATH} needs the {PUBLISH_EVENTS} permission.")
    content_type = _content_type(scope)
    if content_type != "application/json":
        raise exceptions.UnsupportedMediaType(content_type or "(none)")
    body = await read_body(receive, limit, declared)
    if len(body) <= INLINE_PARSE_BYTES:
        events, single = events_from_body(body)
    else:
        events, single = await asyncio.to_thread(events_from_body, body)
    positions = await events_publish(events=events, actor=identity.user.get_username())
    answer: dict[str, Any] = {"positions": positions, "event_ids": [event.event_id for event in events]}
    if single:
        answer["position"] = positions[0]
    await respond(send, 201, answer)
    return 201


def fast_ingest_app(django_app: ASGIApp) -> ASGIApp:
    """Wrap the HTTP app: Bearer event posts are answered here, everything else by `django_app`."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raw_token = wants_fast_path(scope)
        if raw_token is None:
            await django_app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            status = await _answer(scope, receive, send, raw_token)
        except ConnectionAbortedError:
            return  # the client left before sending its body: nobody to answer
        except Exception as error:
            status = await respond_error(send, error)
        observe(VIEW_NAME, "POST", status, started)

    return app
