"""The agents' long-poll, served beside Django's request cycle so a waiting agent costs no thread.

Django gives every request its own thread-sensitive context, and its built-in middleware (sessions,
CSRF, messages...) run their sync hooks through it, which starts one worker thread per request and
keeps it until the response is sent. For `GET /api/hitl/requests/{call_id}/?wait=N` with a Bearer
token (agent runtimes), that would be a thread per waiting agent. This ASGI wrapper answers those
requests itself: the token check and the reads run on the shared pool of worker threads, and the wait
is a future resolved by the bus (hitl.services.await_decision). Same checks, same JSON, same errors as
the DRF view (hitl.api.ApprovalRequestDetailView), which still serves everything else.

A call_id with a NUL or a lone surrogate (percent-encoded in the path) is 400 `invalid` before any
query; an unreachable database is 503 `store_unavailable` with Retry-After (core.outage), never
Daphne's 500 page.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from rest_framework import exceptions

from accounts.auth import authenticate_token
from core.asgi_paths import (
    ASGIApp,
    Receive,
    Scope,
    Send,
    bearer_token,
    host_allowed,
    redirects_to_https,
    respond,
    respond_error,
)
from core.json_input import invalid, text_problem
from core.params import seconds_param

from .api import MAX_WAIT_S, CanSeeApprovals, may_see_approvals
from .selectors import approval_as_dict, approval_visible_get
from .services import await_decision

_DETAIL = re.compile(r"^/api/hitl/requests/(?P<call_id>[^/]+)/$")


def _wants_fast_path(scope: Scope) -> tuple[str, str] | None:
    """(call_id, raw token) for a Bearer long-poll; None for anything Django should serve."""
    if scope.get("type") != "http" or scope.get("method") != "GET":
        return None
    match = _DETAIL.match(scope.get("path", ""))
    if match is None or redirects_to_https(scope) or not host_allowed(scope):
        return None  # the redirect and a refused Host are Django's, as for every other URL
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    wait = query.get("wait", [""])[-1]
    token = bearer_token(scope)
    if not wait or wait in ("0", "0.0") or token is None:
        return None
    return match["call_id"], token


def _check(raw_token: str, call_id: str) -> dict[str, Any]:
    """Authenticate, authorise and load, in a worker thread: the request's JSON, or an error."""
    user, _ = authenticate_token(raw_token)
    if not may_see_approvals(user):
        raise exceptions.PermissionDenied(CanSeeApprovals.message)
    return approval_as_dict(approval_visible_get(user=user, call_id=call_id))


def long_poll_app(django_app: ASGIApp) -> ASGIApp:
    """Wrap the HTTP app: Bearer long-polls are answered here, everything else by `django_app`."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        target = _wants_fast_path(scope)
        if target is None:
            await django_app(scope, receive, send)
            return
        call_id, raw_token = target
        try:
            problem = text_problem(call_id)
            if problem:
                raise invalid("call_id", problem)
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            wait = seconds_param(query.get("wait", [""])[-1], "wait", high=MAX_WAIT_S)
            check = database_sync_to_async(_check, thread_sensitive=False)
            body = await check(raw_token, call_id)
            if body["status"] == "pending" and wait:
                if not await _wait_unless_gone(await_decision(call_id, timeout=wait), receive):
                    return  # the agent hung up: nobody to answer
                body = await check(raw_token, call_id)
            await respond(send, 200, body)
        except Exception as error:
            # The API's errors, DRF's, an outage's 503; anything else is a bug (Daphne's 500, logged).
            await respond_error(send, error)

    return app


async def _wait_unless_gone(waiting: Awaitable[Any], receive: Receive) -> bool:
    """Wait for `waiting`, or stop when the client disconnects; True if it finished."""

    async def until_disconnect() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    waiter = asyncio.ensure_future(waiting)
    gone = asyncio.ensure_future(until_disconnect())
    try:
        await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiter, gone):
            task.cancel()
    return waiter.done() and not waiter.cancelled()
