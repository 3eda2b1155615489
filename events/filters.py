"""The query parameters of the read APIs: the events' filters (django-filter) and the page cursor.

`StoredEventFilter` is the one definition of `session_id`, `correlation_id`, `event_type`,
`event_category`, `since`, `until` and `after`: `GET /api/events/`, `GET /api/audit/` (which adds
`actor`), `GET /api/audit/export/` and `manage.py export_audit` all validate and apply them here, so a
filter means the same rows everywhere. A bad value is an ApplicationError (400) naming the parameter.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import django_filters
from django import forms
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework.exceptions import NotFound
from rest_framework.pagination import Cursor, CursorPagination
from rest_framework.request import Request

from core.errors import ApplicationError
from core.json_input import check_query, shown_value

from .event_types import EventCategory
from .models import StoredEvent

MAX_POSITION = 2**63 - 1  # a BIGINT: a larger number is a 400 here, not an overflow in the database
MAX_ID_LENGTH = 255


class UTCDateTimeField(django_filters.fields.IsoDateTimeField):
    """ISO 8601, UTC when it names no zone, converted to UTC here: an offset that pushes the moment
    past year 9999 is a 400, not an OverflowError in the database adapter."""

    def to_python(self, value: Any) -> datetime | None:
        moment = super().to_python(value)
        if moment is None:
            return None
        try:
            return moment.astimezone(UTC)
        except OverflowError:
            raise ValidationError(
                "Enter a date/time between years 1 and 9999 (UTC).", code="invalid"
            ) from None


class UTCDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = UTCDateTimeField


class PositionFilter(django_filters.Filter):
    """A position: a non-negative integer that fits the store's BIGINT."""

    field_class = forms.IntegerField

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("min_value", 0)
        kwargs.setdefault("max_value", MAX_POSITION)
        super().__init__(*args, **kwargs)


class StoredEventFilter(django_filters.FilterSet):
    """The filters of `/api/events/` and of the export; each applies to a column of StoredEvent (and, by
    the same name, of AuditEntry)."""

    session_id = django_filters.CharFilter(max_length=MAX_ID_LENGTH, help_text="Events of this session.")
    correlation_id = django_filters.CharFilter(
        max_length=MAX_ID_LENGTH, help_text="Events of this correlation id (one agent conversation)."
    )
    event_type = django_filters.CharFilter(
        max_length=100, help_text="Events of this type, e.g. `agent_switched` (more types may be added)."
    )
    event_category = django_filters.ChoiceFilter(
        choices=[(category.value, category.value) for category in EventCategory],
        help_text="Events of this category.",
    )
    since = UTCDateTimeFilter(
        field_name="timestamp",
        lookup_expr="gte",
        help_text="Events whose `timestamp` is at or after this ISO 8601 date-time (UTC if no zone).",
    )
    until = UTCDateTimeFilter(
        field_name="timestamp",
        lookup_expr="lt",
        help_text="Events whose `timestamp` is before this ISO 8601 date-time (exclusive, UTC if no zone).",
    )
    after = PositionFilter(
        field_name="position",
        lookup_expr="gt",
        help_text="Events stored after this position (exclusive): resume from the last position you have.",
    )

    class Meta:
        model = StoredEvent
        fields: list[str] = []  # only the filters declared above


def validated_filters(
    filterset_class: type[django_filters.FilterSet], params: Mapping[str, Any]
) -> django_filters.FilterSet:
    """The bound filterset of `params`, valid; ApplicationError (400) naming each bad parameter.

    Strict: a NUL or a lone surrogate anywhere in the query, a value with spaces around it (Django's
    CharField would strip them: another value than asked for), a choice that is not one (the error
    lists those there are) are 400s like any other bad value.
    """
    check_query(params if hasattr(params, "lists") else params.items())
    filterset = filterset_class(data=params, queryset=filterset_class._meta.model.objects.none())
    valid = filterset.is_valid()
    errors = [
        {"field": field, "message": _message(filterset, field, error), "code": error["code"] or "invalid"}
        for field, field_errors in filterset.errors.get_json_data().items()
        for error in field_errors
    ]
    for name, spec in filterset.filters.items():
        raw = params.get(name)
        if not isinstance(raw, str) or raw == "" or name in filterset.errors:
            continue
        if isinstance(spec, django_filters.CharFilter) and raw != raw.strip():
            errors.append(
                {"field": name, "message": f"{shown_value(raw)} has spaces around it", "code": "invalid"}
            )
        elif isinstance(spec, PositionFilter) and not (raw.isascii() and raw.isdigit()):
            # Django's IntegerField takes " 5", "+5" and "5.0" as 5: a padded or disguised position.
            message = f"{shown_value(raw)} is not a position written in digits"
            errors.append({"field": name, "message": message, "code": "invalid"})
    if not valid or errors:
        first = errors[0]
        detail = f"{first['field']}: {first['message']}"
        if len(errors) > 1:
            detail += f" (and {len(errors) - 1} more)"
        raise ApplicationError(detail, code="invalid", extra={"errors": errors})
    return filterset


def _message(filterset: django_filters.FilterSet, field: str, error: dict[str, Any]) -> str:
    """Django's message, with the values a choice filter allows (Django's names only the bad one)."""
    spec = filterset.filters.get(field)
    if error.get("code") == "invalid_choice" and isinstance(spec, django_filters.ChoiceFilter):
        allowed = ", ".join(str(value) for value, _label in spec.extra["choices"])
        return f"{shown_value(filterset.data.get(field))} is not one of {allowed}"
    return str(error["message"])


def filtered(filterset: django_filters.FilterSet, queryset: QuerySet[Any]) -> QuerySet[Any]:
    """`queryset` narrowed by a valid filterset's values (any model with the filtered columns)."""
    return filterset.filter_queryset(queryset)


def filter_parameters(filterset_class: type[django_filters.FilterSet]) -> list[OpenApiParameter]:
    """The filterset's filters as the schema's query parameters (views here are APIViews, which
    drf-spectacular's django-filter support does not cover)."""
    parameters = []
    for name, spec in filterset_class.base_filters.items():
        schema: dict[str, Any]
        if isinstance(spec, PositionFilter):
            schema = {"type": "integer", "minimum": 0, "maximum": MAX_POSITION}
        elif isinstance(spec, UTCDateTimeFilter):
            schema = {"type": "string", "format": "date-time"}
        elif isinstance(spec, django_filters.ChoiceFilter):
            schema = {"type": "string", "enum": [value for value, _label in spec.extra["choices"]]}
        else:
            schema = {"type": "string", "maxLength": spec.extra.get("max_length", MAX_ID_LENGTH)}
        parameters.append(OpenApiParameter(name, schema, description=spec.extra.get("help_text", "")))
    return parameters


class PositionCursorPagination(CursorPagination):
    """DRF's cursor pagination on a unique, increasing column, strict about its parameters.

    One query per page whatever its size (no COUNT). `limit` outside 1..max_page_size and a cursor
    that is not one of ours are 400s naming the parameter; DRF would ignore the first and answer 404
    to the second.
    """

    ordering = "position"
    page_size = 100
    max_page_size = 500
    page_size_query_param = "limit"
    cursor_query_param = "cursor"

    def get_page_size(self, request: Request) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None or raw == "":
            return self.page_size
        try:
            size = int(raw)
        except ValueError:
            size = 0
        if not 1 <= size <= self.max_page_size:
            raise parameter_error(
                "limit", f"Enter a whole number from 1 to {self.max_page_size}; got {raw[:40]!r}."
            )
        return size

    def decode_cursor(self, request: Request) -> Cursor | None:
        try:
            cursor = super().decode_cursor(request)
        except NotFound:
            raise parameter_error(
                "cursor", "Invalid cursor: use the `next` or `previous` link as given."
            ) from None
        if cursor is not None and cursor.position is not None:
            try:
                position = int(cursor.position)
            except ValueError:
                position = -1
            if not 0 <= position <= MAX_POSITION:
                raise parameter_error("cursor", "Invalid cursor: use the `next` or `previous` link as given.")
        return cursor

    @classmethod
    def query_parameters(cls) -> list[OpenApiParameter]:
        """The schema's parameters of the pagination."""
        return [
            OpenApiParameter(
                cls.page_size_query_param,
                {"type": "integer", "minimum": 1, "maximum": cls.max_page_size},
                description=f"Rows per page, 1 to {cls.max_page_size} ({cls.page_size} by default).",
            ),
            OpenApiParameter(
                cls.cursor_query_param,
                OpenApiTypes.STR,
                description="The page cursor: follow the `next` and `previous` links rather than making one.",
            ),
        ]


def parameter_error(name: str, message: str) -> ApplicationError:
    """A 400 naming the query parameter, shaped like the filters' errors."""
    return ApplicationError(
        f"{name}: {message}",
        code="invalid",
        extra={"errors": [{"field": name, "message": message, "code": "invalid"}]},
    )
