"""The admin of stored events: read-only, and as fast on a million rows as on ten (core.admin_kit).

What this admin does on a big table:

- The paginator's `COUNT(*)` of every row on every page: `CappedPaginator` counts at most
  MAX_PAGED_ROWS + 1 rows (a subquery with a LIMIT), and on PostgreSQL an unfiltered list takes the
  planner's estimate from `pg_class.reltuples` instead; pages go back MAX_PAGED_ROWS rows, and the
  "up to position" box jumps to any older part of the store through the primary key.
- Filters that list every value with `SELECT DISTINCT` (Django's default for a CharField): category
  offers the fixed EventCategory values, type the EventType values plus a box for others, source a box
  plus the values of the newest SUGGESTION_ROWS rows, all without scanning the table.
- Search with `icontains` over several columns (a scan of every row): an exact session id or
  correlation id, or an event id (a whole UUID, or a prefix of one as a range of the unique index).
- Sorting by a column no index serves: only `position` sorts, and only the lookups of the filters
  are accepted in the query string (`?data__icontains=` would scan every row).

The trace and the session timeline are admin pages of their own (`get_urls`), behind the view
permission of stored events. Nobody adds, changes or deletes events here, superusers included; the
tables are append-only in the database as well.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.utils.html import format_html
from django.utils.safestring import SafeString

from core.admin_kit import (
    DateRangeFilter,
    PositionFilter,
    ReadOnlyAdmin,
    ValueFilter,
    format_duration,
    format_moment,
    pretty_json,
    searchable,
    short,
)

from .event_types import EventCategory, EventType
from .models import StoredEvent
from .selectors import with_summary
from .traces import (
    TIMELINE_PAGE,
    TRACE_LIMIT,
    build_trace,
    event_url,
    session_link,
    summary,
    timeline_url,
    trace_rows_html,
    trace_url,
)


class CategoryFilter(admin.SimpleListFilter):
    """The categories of the contract: a fixed list, no query."""

    title = "category"
    parameter_name = "event_category"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(category.value, category.value) for category in EventCategory]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value is None:
            return queryset
        if value not in {
            c.value for c in EventCategory
        }:  # nothing has it, and the database need not see it (a NUL...)
            return queryset.none()
        return queryset.filter(event_category=value)


class EventTypeFilter(ValueFilter):
    title = "type"
    parameter_name = "event_type"
    field_name = "event_type"
    fixed_values = tuple(event_type.value for event_type in EventType)
    placeholder = "another type, exactly"


class SourceFilter(ValueFilter):
    title = "source"
    parameter_name = "source"
    field_name = "source"
    recent_values = True
    placeholder = "exact source"


@admin.register(StoredEvent)
class StoredEventAdmin(ReadOnlyAdmin):
    list_display = (
        "position",
        "when",
        "event_type",
        "event_category",
        "session",
        "correlation",
        "source",
        "actor",
        "trace",
    )
    list_display_links = ("position",)
    sortable_by = ("position",)  # the primary key, both ways
    ordering = ("-position",)
    search_fields = ("session_id", "correlation_id", "event_id")  # see id_search: exact, not icontains
    search_help_text = (
        "A session id's beginning (anywhere in it on PostgreSQL), an exact correlation id, or an event "
        "id (a whole UUID, or its first 8 or more hex digits)."
    )
    list_filter = (CategoryFilter, EventTypeFilter, SourceFilter, DateRangeFilter, PositionFilter)
    allowed_lookups = frozenset({"event_category", "event_type", "source", "position__lte", "since", "until"})
    change_form_template = "admin/events/storedevent/change_form.html"
    readonly_fields = (
        "position",
        "event_id",
        "event_type",
        "event_category",
        "when",
        "source",
        "version",
        "actor",
        "stored_at",
        "session",
        "correlation",
        "cause",
        "pretty_data",
    )
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "position",
                    "event_id",
                    "event_type",
                    "event_category",
                    "when",
                    "source",
                    "version",
                    "actor",
                    "stored_at",
                )
            },
        ),
        ("Tracing", {"fields": ("session", "correlation", "cause")}),
        ("Data", {"fields": ("pretty_data",)}),
    )

    # Columns and fields

    @admin.display(description="timestamp (UTC)")
    def when(self, obj: StoredEvent) -> str:
        return format_moment(obj.timestamp)

    @admin.display(description="session")
    def session(self, obj: StoredEvent) -> SafeString | str:
        return session_link(obj.session_id)

    @admin.display(description="correlation")
    def correlation(self, obj: StoredEvent) -> SafeString | str:
        if not obj.correlation_id:
            return "—"
        return format_html(
            '<a href="{}" title="the trace: {}">{}</a>',
            trace_url(obj.position),
            obj.correlation_id,
            short(obj.correlation_id),
        )

    @admin.display(description="trace")
    def trace(self, obj: StoredEvent) -> SafeString:
        return format_html('<a href="{}">trace</a>', trace_url(obj.position))

    @admin.display(description="caused by")
    def cause(self, obj: StoredEvent) -> SafeString | str:
        if not obj.causation_id:
            return "—"
        try:
            cause_id = uuid.UUID(obj.causation_id)
        except ValueError:
            return obj.causation_id
        position = StoredEvent.objects.filter(event_id=cause_id).values_list("position", flat=True).first()
        if position is None:
            return f"{obj.causation_id} (not stored)"
        return format_html('<a href="{}">{}</a> (#{})', event_url(position), obj.causation_id, position)

    @admin.display(description="data")
    def pretty_data(self, obj: StoredEvent) -> SafeString:
        return pretty_json(obj.data)

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        # The export links (templates/admin/events/_export_links.html) go to the audit app's export.
        return super().changelist_view(request, {**(extra_context or {}), "export_scope": "events"})

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Any = None,
    ) -> HttpResponse:
        if obj is not None:
            context["trace_url"] = trace_url(obj.position)
            context["timeline_url"] = timeline_url(obj.session_id) if obj.session_id else None
        return super().render_change_form(request, context, add, change, form_url, obj)

    # Trace and session timeline

    def get_urls(self) -> list[URLPattern]:
        def wrap(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
            return self.admin_site.admin_view(view)

        info = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path("trace/", wrap(self.trace_view), name=f"{info}_trace"),
            path("timeline/", wrap(self.timeline_view), name=f"{info}_timeline"),
            path("<path:object_id>/trace/", wrap(self.trace_view), name=f"{info}_event_trace"),
            *super().get_urls(),
        ]

    def trace_view(self, request: HttpRequest, object_id: str | None = None) -> HttpResponse:
        """Every event with the correlation id of an event (or the one asked for), as a causation tree."""
        self._check_view(request)
        focus: StoredEvent | None = None
        if object_id is not None:
            if not object_id.isdigit():
                raise Http404("No stored event has this position.")
            focus = StoredEvent.objects.filter(position=int(object_id)).defer("data").first()
            if focus is None:
                raise Http404("No stored event has this position.")
            correlation_id = focus.correlation_id
        else:
            correlation_id = (request.GET.get("correlation_id") or "").strip() or None
            if correlation_id is not None and not searchable(correlation_id):
                correlation_id = None

        if correlation_id is not None:
            queryset = StoredEvent.objects.filter(correlation_id=correlation_id).order_by("position")
        elif focus is not None:
            queryset = StoredEvent.objects.filter(position=focus.position)
        else:
            queryset = StoredEvent.objects.none()
        rows = list(with_summary(queryset)[: TRACE_LIMIT + 1])
        truncated = len(rows) > TRACE_LIMIT
        rows = rows[:TRACE_LIMIT]
        steps = build_trace(rows)
        for step in steps:
            step.extra = {
                "url": event_url(step.position),
                "summary": summary(step.row),
                "when": format_moment(step.row["timestamp"]),
                "since_parent": format_duration(step.since_parent),
                "since_previous": format_duration(step.since_previous),
                "since_start": format_duration(step.since_start),
                "focus": focus is not None and step.position == focus.position,
            }
        span = rows[-1]["timestamp"] - rows[0]["timestamp"] if rows else None
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Trace",
            "subtitle": correlation_id,
            "correlation_id": correlation_id,
            "focus": focus,
            "steps": steps,
            "rows_html": trace_rows_html(steps),
            "count": len(rows),
            "roots": sum(1 for step in steps if step.depth == 0),
            "truncated": truncated,
            "limit": TRACE_LIMIT,
            "span": format_duration(span),
            "all_url": self._url("changelist", query={"q": correlation_id}) if correlation_id else None,
            "asked": object_id is not None or "correlation_id" in request.GET,
            # A trace is a wide report: the admin's app list beside it took a fifth of a desk's width.
            "is_nav_sidebar_enabled": False,
        }
        return TemplateResponse(request, "admin/events/storedevent/trace.html", context)

    def timeline_view(self, request: HttpRequest) -> HttpResponse:
        """The events of one session in position order, with the gap before each, TIMELINE_PAGE a page."""
        self._check_view(request)
        session_id = (request.GET.get("session_id") or "").strip()
        after = _position_param(request, "after")
        before = _position_param(request, "before")
        rows: list[dict[str, Any]] = []
        has_more = False
        previous_row: dict[str, Any] | None = None
        if session_id and searchable(session_id):
            events = StoredEvent.objects.filter(session_id=session_id)
            if before is not None:
                page = list(
                    with_summary(events.filter(position__lt=before).order_by("-position"))[
                        : TIMELINE_PAGE + 1
                    ]
                )
                has_more = len(page) > TIMELINE_PAGE  # older events exist
                rows = list(reversed(page[:TIMELINE_PAGE]))
            else:
                if after is not None:
                    events = events.filter(position__gt=after)
                page = list(with_summary(events.order_by("position"))[: TIMELINE_PAGE + 1])
                has_more = len(page) > TIMELINE_PAGE
                rows = page[:TIMELINE_PAGE]
            if rows:
                # The gap before the page's first event: from the session's event just before it.
                before_first = (
                    StoredEvent.objects.filter(session_id=session_id, position__lt=rows[0]["position"])
                    .order_by("-position")
                    .values("position", "timestamp")
                    .first()
                )
                previous_row = None if before_first is None else dict(before_first)
        entries = []
        last = previous_row
        for row in rows:
            entries.append(
                {
                    "row": row,
                    "url": event_url(row["position"]),
                    "when": format_moment(row["timestamp"]),
                    "gap": format_duration(row["timestamp"] - last["timestamp"]) if last else "",
                    "summary": summary(row),
                    "trace_url": trace_url(row["position"]) if row["correlation_id"] else None,
                }
            )
            last = row
        older = newer = None
        if rows:
            if previous_row is not None:
                older = self._url("timeline", query={"session_id": session_id, "before": rows[0]["position"]})
            if (before is None and has_more) or before is not None:
                newer = self._url("timeline", query={"session_id": session_id, "after": rows[-1]["position"]})
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Session timeline",
            "subtitle": session_id or None,
            "session_id": session_id,
            "entries": entries,
            "page_size": TIMELINE_PAGE,
            "older_url": older,
            "newer_url": newer,
            "first_url": self._url("timeline", query={"session_id": session_id}) if older else None,
            "first_position": rows[0]["position"] if rows else None,
            "last_position": rows[-1]["position"] if rows else None,
            "span": format_duration(rows[-1]["timestamp"] - rows[0]["timestamp"]) if rows else "",
            "changelist_url": self._url("changelist", query={"q": session_id}) if session_id else None,
        }
        return TemplateResponse(request, "admin/events/storedevent/timeline.html", context)


def _position_param(request: HttpRequest, name: str) -> int | None:
    value = (request.GET.get(name) or "").strip()
    if not value.isdigit() or len(value) > 18:
        return None
    return int(value)
