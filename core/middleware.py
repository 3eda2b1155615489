"""The JSON entrance's catch-all for URLs: a NUL or a lone surrogate in the path or the query string.

PostgreSQL refuses a NUL in any text it compares (psycopg raises before the query is sent), so a filter
value or a path segment with one (`?agent=%00`, `/api/hitl/requests/a%00b/`) would be a 500 wherever it
reaches a query: a list filter, a lookup by call_id, the admin's search box. Refused here, once, before
any view runs, in the API's shape `{"detail", "code", "errors": [{"field", "message"}]}`: a 400
`invalid` naming the query parameter, or a 404 `not_found` naming `path` (a path with a NUL names no
resource).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.utils.html import escape

from core.errors import ApplicationError

from .json_input import check_query, invalid, text_problem

# Paths whose clients read JSON (the API, OTLP); the pages and the admin get a page.
JSON_PATHS = ("/api/", "/v1/")


def url_problem(request: HttpRequest) -> ApplicationError | None:
    """The 400 for a path or query string the databases could not compare, or None."""
    problem = text_problem(request.path_info)
    if problem:
        # No resource is named with a NUL: not found (the path names nothing), in the API's shape.
        return invalid("path", f"{problem}, so it names nothing here", code="not_found", status=404)
    try:
        check_query(request.GET)
    except ApplicationError as error:
        return error
    return None


def error_response(error: ApplicationError, request: HttpRequest | None = None) -> HttpResponseBase:
    """The API's error body for `error` (JSON), or a short page for a browser on the pages or the admin."""
    if (
        request is not None
        and not request.path_info.startswith(JSON_PATHS)
        and "text/html" in request.headers.get("Accept", "")
    ):
        page = (
            "<!doctype html><title>Bad request</title><h1>Bad request</h1>"
            f'<p>{escape(error.message)}</p><p><a href="/">Back</a></p>'
        )
        return HttpResponse(page, status=error.status, content_type="text/html; charset=utf-8")
    return JsonResponse({"detail": error.message, "code": error.code, **error.extra}, status=error.status)


class URLTextMiddleware:
    """400 for a NUL or a lone surrogate in the path or in a query parameter's name or value, on every
    path (the API, the pages and the admin all filter with what the URL says)."""

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
        error = url_problem(request)
        if error is not None:
            return error_response(error, request)
        response: HttpResponseBase = self.get_response(request)
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        error = url_problem(request)
        if error is not None:
            return error_response(error, request)
        response: HttpResponseBase = await self.get_response(request)
        return response
