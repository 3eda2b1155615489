"""The one DRF exception handler: every API error is `{"detail": ..., "code": ...}` with its 4xx status.

Validation errors keep their details as an `errors` list, each item naming its field (or, for a batch,
its index). An unreachable database (core.outage.is_outage: a refused or lost connection, the pool's
timeout), met anywhere in a view, authentication included (DRF authenticates lazily, in `initial()`,
inside the handler's reach), is 503 `store_unavailable` with Retry-After. Unknown exceptions still
reach Django (a 500 with a logged traceback): they are bugs, and bad input must never cause one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, UnreadablePostError
from rest_framework import exceptions
from rest_framework.response import Response

from core.outage import is_outage, note_outage, retry_after_headers, store_unavailable_body


class ApplicationError(Exception):
    """The project's error for a refused operation: a message, a stable `code` and an HTTP status."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "invalid",
        status: int = 400,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})


class PayloadTooLarge(exceptions.APIException):
    status_code = 413
    default_detail = "The request body is too large."
    default_code = "payload_too_large"


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's EXCEPTION_HANDLER: the contract's error body for every API error, None for a bug."""
    # Imported here: rest_framework.views imports the authentication classes, which import services,
    # which raise ApplicationError from this module.
    from rest_framework.views import exception_handler as drf_exception_handler
    from rest_framework.views import set_rollback

    if is_outage(exc):
        note_outage(exc, context["request"].path if context.get("request") is not None else "")
        set_rollback()
        return Response(store_unavailable_body(), status=503, headers=retry_after_headers())
    if isinstance(exc, ApplicationError):
        set_rollback()
        return Response(
            {"detail": exc.message, "code": exc.code, **exc.extra}, status=exc.status, headers=exc.headers
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, RequestDataTooBig):
        # Django's DATA_UPLOAD_MAX_MEMORY_SIZE, met while parsing a form body: the client's fault.
        exc = PayloadTooLarge(str(exc) or None)
    elif isinstance(exc, UnreadablePostError):
        exc = exceptions.ParseError(f"The request body could not be read: {exc}")
    response = drf_exception_handler(exc, context)
    if response is None or not isinstance(exc, exceptions.APIException):
        return response
    response.data = error_body(exc)
    return response


def error_body(exc: exceptions.APIException) -> dict[str, Any]:
    """The contract's error object for a DRF exception."""
    detail = exc.detail
    if isinstance(detail, list | dict):
        errors = list(_flatten(detail))
        if not errors:
            return {"detail": "Invalid input.", "code": exc.default_code, "errors": []}
        first = errors[0]
        summary = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
        if len(errors) > 1:
            summary += f" (and {len(errors) - 1} more)"
        return {"detail": summary, "code": exc.default_code, "errors": errors}
    return {"detail": str(detail), "code": getattr(detail, "code", None) or exc.default_code}


def _flatten(detail: Any, field: str | None = None) -> Iterator[dict[str, Any]]:
    """Each leaf of a nested DRF error detail as {"field", "message", "code"}; fields as dotted paths."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            path: str | None
            if isinstance(key, int):  # an item of a list, as nested serializers with many=True report it
                path = f"{field or ''}[{key}]"
            elif key == "non_field_errors":
                path = field
            else:
                path = str(key) if field is None else f"{field}.{key}"
            yield from _flatten(value, path)
    elif isinstance(detail, list):
        for index, item in enumerate(detail):
            if isinstance(item, dict | list):
                # A list of nested objects (a serializer with many=True): the index names the item.
                yield from _flatten(item, f"{field or ''}[{index}]")
            else:
                yield from _flatten(item, field)
    else:
        yield {"field": field, "message": str(detail), "code": getattr(detail, "code", None) or "invalid"}
