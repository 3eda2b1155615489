"""`POST /api/hitl/requests/` from an agent's token, answered beside Django's request cycle.

An agent asks before each risky tool call and waits for the answer; when an approval rule decides, that
answer is the whole wait. Through Django under ASGI the request paid a thread of its own for the sync
middleware, a second hop to a worker thread for DRF's `initial()` (authentication, permissions), the
rendering and the response middleware: about half of the 18-23 ms the agent waited
(docs/benchmarks.md, `policy_decide.py`). This ASGI wrapper answers those requests itself, with one
hop to a worker thread that runs the view's own steps in the view's order: the token
(accounts.auth, cached), the view's permissions (hitl.api.CanSeeApprovals, then check_may_request),
the body through the same JSON entrance as the DRF parser (core.json_input.parse_json), the same input
checks (hitl.api.request_input) and the same service (hitl.services.approval_request, one transaction:
the row, its stored event and its audit entry). The answers, errors included, are the view's.

Only the plain case is taken: a Bearer token, a Host that ALLOWED_HOSTS accepts, `Content-Type:
application/json`, no query string, a Content-Length from 1 byte up to DATA_UPLOAD_MAX_MEMORY_SIZE,
and no `Accept` or one that takes JSON. Anything else (a 400 for the Host, a 415 or a 406 to give, an
empty or oversized body, a session cookie without a token, plain HTTP when HTTPS is required) is left
to Django.
"""

from __future__ import annotations

import time
from typing import Any

from rest_framework import exceptions

from accounts.auth import authenticate_token
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
from core.async_views import off_shared_thread
from core.json_input import parse_json
from core.parsers import max_body_bytes

from .api import (
    CanSeeApprovals,
    check_may_request,
    json_object,
    may_see_approvals,
    request_create,
    request_input,
)
from .selectors import approval_as_dict

PATH = "/api/hitl/requests/"
VIEW_NAME = "hitl-requests"  # the URL name of the DRF view: one series in the latency histogram
# What DRF's negotiation (JSONRenderer only) answers without a doubt; any other Accept goes to Django.
JSON_ACCEPTS = frozenset({"*/*", "application/json"})


def _declared_length(scope: Scope) -> int | None:
    raw = header(scope, b"content-length")
    return int(raw) if raw is not None and raw.isdigit() else None


def wants_fast_path(scope: Scope) -> str | None:
    """The raw token of a Bearer request for approval this path answers; None for Django to serve."""
    if scope.get("type") != "http" or scope.get("method") != "POST" or scope.get("path") != PATH:
        return None
    if scope.get("query_string") or redirects_to_https(scope) or not host_allowed(scope):
        return None  # the URL's entrance checks (core.middleware), the redirect, a refused Host: Django's
    content_type = header(scope, b"content-type")
    if content_type is None or content_type.split(";", 1)[0].strip() != "application/json":
        return None  # DRF's 415 (or its parser choice) is Django's
    accept = header(scope, b"accept")
    if accept is not None and accept.strip() not in JSON_ACCEPTS:
        return None  # DRF's content negotiation (a 406 maybe) is Django's
    declared = _declared_length(scope)
    limit = max_body_bytes()
    if declared is None or declared == 0 or (limit is not None and declared > limit):
        return None  # DRF reads no body without a length (an empty object); a 413 is Django's too
    return bearer_token(scope)


def _answer(raw_token: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """In a worker thread, the view's steps in its order: authenticate, authorise, parse, check, ask."""
    user, _ = authenticate_token(raw_token)  # AuthenticationFailed: 401
    if not may_see_approvals(user):
        raise exceptions.PermissionDenied(CanSeeApprovals.message)
    check_may_request(user)
    data = request_input(json_object(parse_json(body, "body", path="")))
    approval, created = request_create(data=data, user=user)
    return (201 if created else 200), approval_as_dict(approval)


def fast_request_app(django_app: ASGIApp) -> ASGIApp:
    """Wrap the HTTP app: agents' requests for approval are answered here, everything else by `django_app`."""
    answer = off_shared_thread(_answer)  # its connection closed at the end, as the view's

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raw_token = wants_fast_path(scope)
        if raw_token is None:
            await django_app(scope, receive, send)
            return
        started = time.perf_counter()
        declared = _declared_length(scope)
        assert declared is not None  # wants_fast_path took only requests that declare their length
        try:
            body = await read_body(receive, declared, declared)
            status, content = await answer(raw_token, body)
            await respond(send, status, content)
        except ConnectionAbortedError:
            return  # the client left before sending its body: nobody to answer
        except Exception as error:
            status = await respond_error(send, error)
        observe(VIEW_NAME, "POST", status, started)

    return app
