"""The admin of stored events: read-only, and as fast on a million rows as on ten.

What makes a Django changelist slow on a big table, and what this one does instead:

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

import json
import math
import re
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property, lru_cache
from html import escape
from typing import Any

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.core.paginator import Page, Paginator
from django.db import connections
from django.db.models import Model, Q, QuerySet
from django.db.models.fields.json import KT
from django.http import Http404, HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, get_script_prefix, path, reverse
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.safestring import SafeString, mark_safe

from .event_types import EventCategory, EventType
from .models import StoredEvent

LIST_PER_PAGE = 100
# Paging reaches this many rows back (200 pages); the "up to position" box goes further.
MAX_PAGED_ROWS = 20_000
# The source filter suggests the values of the newest rows: a bounded read of the primary key.
SUGGESTION_ROWS = 500
SUGGESTIONS = 15
# A trace shows at most this many events; a timeline page this many.
TRACE_LIMIT = 2_000
TIMELINE_PAGE = 500
# An event id prefix shorter than this could be a word ("cafe"); 8 is a UUID's first group.
MIN_EVENT_ID_PREFIX = 8
# Deeper levels of a trace are not indented further (the depth is still shown).
MAX_INDENT = 30
SHORT_TEXT = 40
# Keys of `data` that say what a step of a trace did, in the order shown.
SUMMARY_KEYS = ("agent_type", "from_agent", "to_agent", "tool_name", "decision", "role", "username")

_HEX = re.compile(r"[0-9a-f]+")
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


# Shared by the events and the audit admins


def pretty_json(value: Any) -> SafeString:
    """A JSON value indented in a <pre>, escaped."""
    text = json.dumps(value, indent=2, ensure_ascii=False)
    return format_html('<pre class="events-json">{}</pre>', text)


def short(value: str | None, limit: int = SHORT_TEXT) -> str:
    """A long id cut to fit a column (the whole value is in the link's title)."""
    if value is None:
        return ""
    return value if len(value) <= limit else value[: limit - 1] + "…"


def format_moment(moment: datetime | None) -> str:
    """A timestamp in UTC to the millisecond: what an auditor compares across rows."""
    if moment is None:
        return ""
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def format_duration(delta: timedelta | None) -> str:
    """A signed, human duration: +850 ms, +1.250 s, +2 min 5.0 s, +1 h 02 min, −3 ms (clock skew)."""
    if delta is None:
        return ""
    micros = delta // timedelta(microseconds=1)
    sign = "−" if micros < 0 else "+"
    micros = abs(micros)
    ms = micros / 1000
    if ms < 10:
        return f"{sign}{ms:.1f} ms"
    if ms < 1000:
        return f"{sign}{ms:.0f} ms"
    seconds = micros / 1_000_000
    if seconds < 60:
        return f"{sign}{seconds:.3f} s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{sign}{int(minutes)} min {rest:.1f} s"
    hours, minutes = divmod(int(minutes), 60)
    if hours < 48:
        return f"{sign}{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{sign}{days} d {hours} h"


def searchable(text: str) -> bool:
    """Whether a typed value can be sent to the database at all (PostgreSQL refuses NUL characters)."""
    return "\x00" not in text


def event_id_condition(term: str, field_name: str = "event_id") -> Q | None:
    """An exact event id, or a range of the UUID index for a prefix of one; None when it is neither."""
    try:
        return Q(**{field_name: uuid.UUID(term)})
    except ValueError:
        pass
    digits = term.lower().replace("-", "")
    if MIN_EVENT_ID_PREFIX <= len(digits) < 32 and _HEX.fullmatch(digits):
        # UUIDs sort as their bytes (PostgreSQL) or their hex text (SQLite): a prefix is a range.
        low, high = uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))
        return Q(**{f"{field_name}__gte": low, f"{field_name}__lte": high})
    return None


def id_search(queryset: QuerySet[Any], search_term: str) -> QuerySet[Any]:
    """Rows whose session id or correlation id is the term, or whose event id is (or starts with) it.

    Each alternative is an equality or a range on an index; PostgreSQL ORs their bitmaps. Django's
    own search (`icontains`, or `iexact`, which is `UPPER(...)`) could use none of them.
    """
    term = search_term.strip()
    if not term:
        return queryset
    if not searchable(term):
        return queryset.none()
    condition = Q(session_id=term) | Q(correlation_id=term)
    by_id = event_id_condition(term)
    if by_id is not None:
        condition |= by_id
    return queryset.filter(condition)


def estimated_rows(model: type[Model], using: str) -> int | None:
    """PostgreSQL's estimate of a table's rows (kept by ANALYZE and autovacuum); None elsewhere."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(%s)",
            [connection.ops.quote_name(model._meta.db_table)],
        )
        row = cursor.fetchone()
    if row is None or row[0] is None or row[0] < 0:  # -1: never analysed
        return None
    return int(row[0])


class CappedPaginator(Paginator):
    """Pages a changelist without counting the whole table.

    It counts at most `max_rows + 1` rows: `SELECT COUNT(*) FROM (SELECT ... LIMIT max_rows + 1)`,
    which an index serves in a few milliseconds. An unfiltered list on PostgreSQL, when the table's
    estimate is above that, shows "about N" from the estimate and runs no count at all. Either way the
    pages reach `max_rows` rows back: offsets beyond cost a scan of every row skipped.
    """

    max_rows = MAX_PAGED_ROWS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.estimated = False
        self.capped = False

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not isinstance(queryset, QuerySet):
            return len(queryset)
        if not queryset.query.where:
            estimate = estimated_rows(queryset.model, queryset.db)
            if estimate is not None and estimate > self.max_rows:
                self.estimated = True
                return estimate
        counted = queryset.order_by()[: self.max_rows + 1].count()
        self.capped = counted > self.max_rows
        return counted

    @cached_property
    def num_pages(self) -> int:
        pages = Paginator.num_pages.func(self)  # type: ignore[attr-defined]
        return int(min(pages, max(1, math.ceil(self.max_rows / self.per_page))))

    def page(self, number: Any) -> Any:
        number = self.validate_number(number)
        bottom = (number - 1) * self.per_page
        top = bottom + self.per_page
        if not self.limited and top + self.orphans >= self.count:
            top = self.count  # the exact end; a capped or estimated count is not one
        return Page(self.object_list[bottom:top], number, self)

    @property
    def limited(self) -> bool:
        """Whether there are rows the pages do not reach."""
        return self.estimated or self.capped

    @property
    def max_rows_label(self) -> str:
        """How far back the pages reach, as shown."""
        return f"{self.max_rows:,}"

    @property
    def count_label(self) -> str:
        """The count as shown: exact, "about N" (an estimate) or "more than N"."""
        if self.estimated:
            return f"about {self.count:,}"
        if self.capped:
            return f"more than {self.max_rows:,}"
        return f"{self.count:,}"


class LargeTableChangeList(ChangeList):
    """Sorts only by the columns the admin allows (not by `?o=` of any column) and skips heavy fields."""

    model_admin: Any

    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> QuerySet[Any]:
        queryset = super().get_queryset(request, exclude_parameters)
        deferred = getattr(self.model_admin, "list_deferred", ())
        return queryset.defer(*deferred) if deferred else queryset

    def get_ordering_field(self, field_name: Any) -> Any:
        if self.sortable_by is not None and field_name not in self.sortable_by:
            return None  # an unindexed ORDER BY would sort the whole table for one page
        return super().get_ordering_field(field_name)


class ValueFilter(admin.SimpleListFilter):
    """An exact value typed into a box (served by a (column, position) index), with suggested values.

    The suggestions never come from `SELECT DISTINCT` over the table: they are fixed (`fixed_values`)
    or read from the newest SUGGESTION_ROWS rows through the primary key (`recent_values = True`).
    """

    template = "admin/events/value_filter.html"
    field_name = ""
    fixed_values: Sequence[str] = ()
    recent_values = False
    placeholder = "exact value"
    hidden_params: list[tuple[str, str]]

    def __init__(self, request: HttpRequest, params: dict[str, Any], model: Any, model_admin: Any) -> None:
        super().__init__(request, params, model, model_admin)
        key = str(self.parameter_name)
        value = self.used_parameters.get(key)
        if value is not None and (value.strip() == "" or not searchable(value)):
            del self.used_parameters[key]  # an empty box means no filter
        self.hidden_params = []

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        values = list(self.fixed_values)
        if self.recent_values:
            recent = model_admin.model._default_manager.order_by("-pk").values_list(
                self.field_name, flat=True
            )[:SUGGESTION_ROWS]
            values = sorted({value for value in recent if value})[:SUGGESTIONS]
        return [(value, value) for value in values]

    def has_output(self) -> bool:
        return True  # the box, even with nothing to suggest

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value is None:
            return queryset
        return queryset.filter(**{self.field_name: value.strip()})

    def choices(self, changelist: ChangeList) -> Iterator[Any]:
        # The box's form keeps the other filters, the search and the ordering (and restarts paging).
        self.hidden_params = [(k, str(v)) for k, v in changelist.params.items() if k != self.parameter_name]
        yield from super().choices(changelist)


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


class PositionFilter(admin.SimpleListFilter):
    """Events up to a position: the way to any older part of the store, as a range of the primary key."""

    title = "up to position"
    parameter_name = "position__lte"
    template = "admin/events/position_filter.html"
    field_name = "position"
    invalid: str | None = None
    hidden_params: list[tuple[str, str]]

    def __init__(self, request: HttpRequest, params: dict[str, Any], model: Any, model_admin: Any) -> None:
        super().__init__(request, params, model, model_admin)
        value = self.used_parameters.get(str(self.parameter_name))
        self.hidden_params = []
        if value is None:
            return
        if not value.strip().isdigit() or len(value.strip()) > 18:
            if value.strip():
                self.invalid = value  # shown next to the box; the list is not filtered
            del self.used_parameters[str(self.parameter_name)]

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return []

    def has_output(self) -> bool:
        return True

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value is None:
            return queryset
        return queryset.filter(**{f"{self.field_name}__lte": int(value)})

    def choices(self, changelist: ChangeList) -> Iterator[Any]:
        self.hidden_params = [(k, str(v)) for k, v in changelist.params.items() if k != self.parameter_name]
        yield from super().choices(changelist)  # "All" alone: there are no lookups


class ReadOnlyAdmin(admin.ModelAdmin):
    """Viewing only, for everyone: no add, change or delete, and nothing a big table cannot afford."""

    list_per_page = LIST_PER_PAGE
    show_full_result_count = False  # no COUNT(*) of the whole table beside the filtered one
    show_facets = admin.ShowFacets.NEVER  # facets are one COUNT per filter value
    list_select_related = False
    paginator = CappedPaginator
    actions = None  # no delete_selected, and no checkbox column
    list_deferred: tuple[str, ...] = ("data",)  # the rows do not show it
    # Query-string parameters the changelist accepts besides search, ordering and paging.
    allowed_lookups: frozenset[str] = frozenset()

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return LargeTableChangeList

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        # Django allows any lookup on a local field (`?data__icontains=`, `?source__iregex=`): each a
        # scan of every row. Only the filters' own parameters pass; anything else is a 400.
        return lookup in self.allowed_lookups

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        return id_search(queryset, search_term), False

    def _check_view(self, request: HttpRequest) -> None:
        if not self.has_view_permission(request):
            raise PermissionDenied

    def _url(self, name: str, *args: Any, query: dict[str, Any] | None = None) -> str:
        url = reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_{name}", args=args)
        return f"{url}?{urlencode(query)}" if query else url


# Trace and timeline


_PLACEHOLDER = "0"


@lru_cache(maxsize=64)
def _reversed(name: str, script_prefix: str, with_id: bool) -> tuple[str, str]:
    # reverse() is a fair share of a changelist's time at three links a row: each URL is reversed once
    # (per script prefix) and the row's position put in its place.
    url = reverse(name, args=[_PLACEHOLDER] if with_id else [])
    if not with_id:
        return url, ""
    head, _, tail = url.rpartition(f"/{_PLACEHOLDER}/")
    return head + "/", "/" + tail


def _url_of(name: str, position: int | None = None) -> str:
    head, tail = _reversed(name, get_script_prefix(), position is not None)
    return head if position is None else f"{head}{int(position)}{tail}"


def trace_url(position: int) -> str:
    """The trace page of an event: every event with its correlation id."""
    return _url_of("admin:events_storedevent_event_trace", position)


def correlation_trace_url(correlation_id: str) -> str:
    """The trace page of a correlation id (an audit entry's event may have been purged)."""
    return _url_of("admin:events_storedevent_trace") + "?" + urlencode({"correlation_id": correlation_id})


def timeline_url(session_id: str) -> str:
    """The timeline page of a session."""
    return _url_of("admin:events_storedevent_timeline") + "?" + urlencode({"session_id": session_id})


def event_url(position: int) -> str:
    """The admin page of one stored event."""
    return _url_of("admin:events_storedevent_change", position)


_STEP_FIELDS = (
    "position",
    "event_id",
    "event_type",
    "event_category",
    "timestamp",
    "session_id",
    "correlation_id",
    "causation_id",
    "source",
    "actor",
)


def _with_summary(queryset: QuerySet[StoredEvent]) -> QuerySet[Any]:
    """The fields of a step, and the few keys of `data` that say what it did (not all of `data`)."""
    keys = {f"data_{key}": KT(f"data__{key}") for key in SUMMARY_KEYS}
    return queryset.annotate(**keys).values(*_STEP_FIELDS, *keys)


def _summary(row: dict[str, Any]) -> str:
    parts = []
    for key in SUMMARY_KEYS:
        value = row.get(f"data_{key}")
        if value not in (None, ""):
            parts.append(f"{key}={short(str(value), 60)}")
    return " · ".join(parts)


def _normalise_id(value: str | None) -> str | None:
    if value is None or _CANONICAL_UUID.fullmatch(value):
        return value  # what the bus writes: str(uuid4())
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return value


@dataclass
class TraceStep:
    """One event of a trace, where it sits in the causation tree, and how long after what it came."""

    row: dict[str, Any]
    depth: int
    parent: dict[str, Any] | None
    since_parent: timedelta | None = None
    since_previous: timedelta | None = None
    since_start: timedelta | None = None
    children: int = 0
    cycle: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def position(self) -> int:
        return int(self.row["position"])

    @property
    def indent(self) -> float:
        return min(self.depth, MAX_INDENT) * 1.5


def build_trace(rows: list[dict[str, Any]]) -> list[TraceStep]:
    """The events of one correlation id (in position order) as a causation tree, depth first.

    An event whose causation id names an event of the list is that event's child; every other is a
    root (its cause is outside the list, or it has none). Children follow their parent in position
    order. Durations: since the parent, since the previous event of the trace (position order), and
    since the trace's first event. A causation cycle (only bad data makes one) is cut where found.
    """
    by_id = {str(row["event_id"]): row for row in rows}  # a UUID: str() is the canonical form
    children: dict[str, list[dict[str, Any]]] = defaultdict(list)
    parent_of: dict[int, dict[str, Any]] = {}
    roots = []
    for row in rows:
        cause = _normalise_id(row["causation_id"])
        own = str(row["event_id"])
        if cause is not None and cause in by_id and cause != own:
            children[cause].append(row)
            parent_of[row["position"]] = by_id[cause]
        else:
            roots.append(row)

    previous: dict[int, dict[str, Any]] = {}
    for before, after in zip(rows, rows[1:], strict=False):
        previous[after["position"]] = before
    start = rows[0]["timestamp"] if rows else None

    steps: list[TraceStep] = []
    seen: set[int] = set()

    def walk(root: dict[str, Any], *, cycle: bool) -> None:
        # Iterative: a chain of TRACE_LIMIT events would pass Python's recursion limit.
        stack: list[tuple[dict[str, Any], int]] = [(root, 0)]
        while stack:
            row, depth = stack.pop()
            if row["position"] in seen:
                continue
            seen.add(row["position"])
            kids = children.get(str(row["event_id"]), [])
            parent = None if depth == 0 else parent_of.get(row["position"])
            before = previous.get(row["position"])
            steps.append(
                TraceStep(
                    row=row,
                    depth=depth,
                    parent=parent,
                    since_parent=None if parent is None else row["timestamp"] - parent["timestamp"],
                    since_previous=None if before is None else row["timestamp"] - before["timestamp"],
                    since_start=None if start is None else row["timestamp"] - start,
                    children=len(kids),
                    cycle=cycle and depth == 0,
                )
            )
            stack.extend((kid, depth + 1) for kid in reversed(kids))

    for root in roots:
        walk(root, cycle=False)
    for row in rows:  # what no root reaches is caught in a cycle
        if row["position"] not in seen:
            walk(row, cycle=True)
    return steps


_TRACE_ROW = (
    '<tr class="events-step{focus}" data-position="{position}" data-depth="{depth}">'
    '<td style="padding-left: {indent}em;">{branch}<a href="{url}">{event_type}</a>{notes}</td>'
    '<td><a href="{url}">#{position}</a></td>'
    "<td>{when}</td>"
    '<td class="events-duration events-since-parent">{since_parent}</td>'
    '<td class="events-duration events-since-previous">{since_previous}</td>'
    '<td class="events-duration events-since-start">{since_start}</td>'
    "<td>{source}</td><td>{actor}</td><td>{session}</td>"
    '<td class="events-summary">{summary}</td></tr>'
)


def trace_rows_html(steps: list[TraceStep]) -> SafeString:
    """The trace's table rows, every value escaped.

    Built here rather than in the template: 2,000 rows of ten cells through the template engine (or
    format_html, which escapes through lazy wrappers) take most of a second; str.format with
    html.escape a few dozen milliseconds.
    """
    sessions: dict[str, str] = {}
    rows = []
    for step in steps:
        row, extra = step.row, step.extra
        notes = ""
        if step.cycle:
            notes += ' <span class="quiet">(causation cycle)</span>'
        if step.depth > MAX_INDENT:
            notes += f' <span class="quiet">(depth {step.depth})</span>'
        session_id = row["session_id"]
        if not session_id:
            session = "—"
        elif session_id in sessions:
            session = sessions[session_id]
        else:
            link, label = escape(timeline_url(session_id)), escape(short(session_id, 24))
            session = sessions[session_id] = f'<a href="{link}" title="{escape(session_id)}">{label}</a>'
        rows.append(
            _TRACE_ROW.format(
                focus=" events-focus" if extra.get("focus") else "",
                position=int(step.position),
                depth=int(step.depth),
                indent=f"{step.indent:.1f}",
                branch='<span class="events-branch">└ </span>' if step.depth else "",
                url=escape(extra["url"]),
                event_type=escape(row["event_type"]),
                notes=notes,
                when=escape(extra["when"]),
                since_parent=escape(extra["since_parent"] or "—"),
                since_previous=escape(extra["since_previous"] or "—"),
                since_start=escape(extra["since_start"]),
                source=escape(row["source"]),
                actor=escape(row["actor"] or "—"),
                session=session,
                summary=escape(extra["summary"]),
            )
        )
    return mark_safe("\n".join(rows))  # every value above is escaped


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
        "An exact session id or correlation id, or an event id (a whole UUID, or its first 8 or more "
        "hex digits)."
    )
    list_filter = (CategoryFilter, EventTypeFilter, SourceFilter, PositionFilter)
    allowed_lookups = frozenset({"event_category", "event_type", "source", "position__lte"})
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
        if not obj.session_id:
            return "—"
        return format_html(
            '<a href="{}" title="the session\'s timeline: {}">{}</a>',
            timeline_url(obj.session_id),
            obj.session_id,
            short(obj.session_id),
        )

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
        rows = list(_with_summary(queryset)[: TRACE_LIMIT + 1])
        truncated = len(rows) > TRACE_LIMIT
        rows = rows[:TRACE_LIMIT]
        steps = build_trace(rows)
        for step in steps:
            step.extra = {
                "url": event_url(step.position),
                "summary": _summary(step.row),
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
                    _with_summary(events.filter(position__lt=before).order_by("-position"))[
                        : TIMELINE_PAGE + 1
                    ]
                )
                has_more = len(page) > TIMELINE_PAGE  # older events exist
                rows = list(reversed(page[:TIMELINE_PAGE]))
            else:
                if after is not None:
                    events = events.filter(position__gt=after)
                page = list(_with_summary(events.order_by("position"))[: TIMELINE_PAGE + 1])
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
                    "summary": _summary(row),
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
