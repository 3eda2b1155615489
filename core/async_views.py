"""AsyncAPIView: a DRF APIView with coroutine handlers that never waits on the thread sync views share.

Under ASGI, Django runs every sync view (and each sync_to_async call with thread_sensitive=True) on one
shared thread. A handler that waits for something slow (a commit, a human decision) must not occupy it.

`adrf` (checked: 0.1.14) would give async handlers, but runs `initial()` (authentication, permissions,
throttles: database queries) through sync_to_async(thread_sensitive=True), on that shared thread, and
needs another dependency. Here, DRF's own machinery runs unchanged: `initial()` (and any sync handler,
such as OPTIONS) in a worker thread of its own with a connection closed afterwards, coroutine handlers on
the event loop, errors through the project's exception handler. The response is rendered here and handed
to Django as a plain HttpResponse, because Django renders a deferred (DRF) response on the shared thread.
drf-spectacular documents these views like any APIView.
"""

from __future__ import annotations

import functools
from inspect import iscoroutinefunction
from typing import Any

from channels.db import database_sync_to_async
from django.db import connection
from django.http import HttpRequest, HttpResponse
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from core.negotiation import SignedInBrowsableAPIRenderer, SignedInBrowserNegotiation


class AsyncAPIView(APIView):
    """An APIView whose handlers are `async def`; everything sync runs off the shared thread."""

    # JSON, and the browsable API for a signed-in browser only (core.negotiation: it renders here, on the
    # event loop, without a query).
    renderer_classes = [JSONRenderer, SignedInBrowsableAPIRenderer]
    content_negotiation_class: type[BaseContentNegotiation] = SignedInBrowserNegotiation

    async def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:  # type: ignore[override]
        """APIView.dispatch, awaiting the handler; sync steps run in a worker thread."""
        self.args = args
        self.kwargs = kwargs
        drf_request = self.initialize_request(request, *args, **kwargs)
        self.request = drf_request
        self.headers = self.default_response_headers
        try:
            await off_shared_thread(self.initial)(drf_request, *args, **kwargs)
            method = (drf_request.method or "").lower()
            handler = getattr(self, method, None) if method in self.http_method_names else None
            if handler is None:
                handler = self.http_method_not_allowed
            if iscoroutinefunction(handler):
                response = await handler(drf_request, *args, **kwargs)
            else:
                response = await off_shared_thread(handler)(drf_request, *args, **kwargs)
        except Exception as exc:
            response = self.handle_exception(exc)
        self.response = self.finalize_response(drf_request, response, *args, **kwargs)
        return rendered(self.response)


def off_shared_thread(fn: Any) -> Any:
    """`fn` as a coroutine function run in a worker thread (not the shared one), closing its connection."""

    @functools.wraps(fn)
    def released(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        finally:
            # Closed (back to the pool) from inside the call, not only by database_sync_to_async's
            # clean-up: with PostgreSQL's pool, a worker thread whose caller was cancelled meanwhile (a
            # WebSocket whose client left) was seen to keep its connection, and the pool ran dry.
            connection.close()

    return database_sync_to_async(released, thread_sensitive=False)


def rendered(response: HttpResponse) -> HttpResponse:
    """A plain HttpResponse with the rendered content of a DRF Response (others pass through)."""
    if not isinstance(response, Response):
        return response
    response.render()
    plain = HttpResponse(response.content, status=response.status_code)
    for header, value in response.items():
        plain[header] = value
    for cookie in response.cookies.values():
        plain.cookies[cookie.key] = cookie
    return plain
