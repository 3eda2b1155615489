"""An admin that stays fast on a million rows, shared by the events and the audit admins.

What makes a Django changelist slow on a big table, and what this kit does instead:

- The paginator's `COUNT(*)` of every row on every page: `CappedPaginator` counts at most
  MAX_PAGED_ROWS + 1 rows (a subquery with a LIMIT), and on PostgreSQL an unfiltered list takes the
  planner's estimate from `pg_class.reltuples` instead; pages go back MAX_PAGED_ROWS rows, and the
  "up to position" box (PositionFilter) jumps to any older part of the table through the primary key.
- Filters that list every value with `SELECT DISTINCT`: `ValueFilter` offers fixed values plus a box.
- Search with `icontains` over several columns: `id_search` matches exact ids, or a UUID prefix as a
  range of the unique index.
- `ReadOnlyAdmin`: nobody adds, changes or deletes rows, superusers included.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.core.paginator import Page, Paginator
from django.db import connections
from django.db.models import F, Lookup, Model, Q, QuerySet, Value
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.safestring import SafeString

LIST_PER_PAGE = 100
# Paging reaches this many rows back (200 pages); the "up to position" box goes further.
MAX_PAGED_ROWS = 20_000
# The source filter suggests the values of the newest rows: a bounded read of the primary key.
SUGGESTION_ROWS = 500
SUGGESTIONS = 15
# An event id prefix shorter than this could be a word ("cafe"); 8 is a UUID's first group.
MIN_EVENT_ID_PREFIX = 8
SHORT_TEXT = 40

_HEX = re.compile(r"[0-9a-f]+")


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
    """Rows whose session id starts with the term (or, on PostgreSQL, holds it), whose correlation id is
    the term, or whose event id is (or starts with) it.

    Each alternative is an equality or a range on an index; PostgreSQL ORs their bitmaps. Django's
    own search (`icontains`, or `iexact`, which is `UPPER(...)`) could use none of them.
    """
    term = search_term.strip()
    if not term:
        return queryset
    if not searchable(term):
        return queryset.none()
    condition = Q(correlation_id=term) | text_search(queryset, ["session_id"], term)
    by_id = event_id_condition(term)
    if by_id is not None:
        condition |= by_id
    return queryset.filter(condition)


# Above every character a column can hold: `column < term + TOP` ends a prefix's range.
_TOP = "\U0010ffff"


class ILike(Lookup):
    """`lhs ILIKE rhs` (PostgreSQL): what a trigram GIN index (gin_trgm_ops) serves. Django's
    `icontains` is `UPPER(column) LIKE UPPER(...)`, which an index on the column cannot."""

    lookup_name = "ilike"

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, tuple[Any, ...]]:
        lhs, lhs_params = self.process_lhs(compiler, connection)
        rhs, rhs_params = self.process_rhs(compiler, connection)
        return f"{lhs} ILIKE {rhs}", (*lhs_params, *rhs_params)


def like_escaped(term: str) -> str:
    """A term as literal text inside a LIKE pattern (PostgreSQL's default escape, the backslash)."""
    return term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def text_search(queryset: QuerySet[Any], fields: Sequence[str], term: str) -> Q:
    """Rows where one of `fields` starts with the term, or (on PostgreSQL) holds it anywhere, ignoring
    case: a condition each index serves at a million rows.

    PostgreSQL: ILIKE '%term%', served by each field's trigram GIN index (the migrations named
    `*_trigram_search`). Elsewhere (SQLite): a case-sensitive range from the term to the term followed by
    the highest character, which each field's ordinary B-tree index serves (SQLite's LIKE, which
    `istartswith` is, uses no index on a column of the default collation).
    """
    if connections[queryset.db].vendor == "postgresql":
        pattern = f"%{like_escaped(term)}%"
        conditions = [ILike(F(field), Value(pattern)) for field in fields]
        condition = Q(conditions[0])
        for other in conditions[1:]:
            condition |= Q(other)
        return condition
    condition = Q()
    for field in fields:
        condition |= Q(**{f"{field}__gte": term, f"{field}__lt": term + _TOP})
    return condition


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


def parse_moment(text: str) -> datetime | None:
    """An ISO 8601 date-time (or date) as the API's `since`/`until` read it: in the current time zone
    when it names none, then in UTC; None when it is not one."""
    try:
        moment = parse_datetime(text.strip())
    except ValueError:
        return None
    if moment is None:
        return None
    try:
        if timezone.is_naive(moment):
            moment = timezone.make_aware(moment)
        return moment.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


class DateRangeFilter(admin.ListFilter):
    """Rows from `since` (inclusive) until `until` (exclusive) on a timestamp: the API's parameters,
    with the same meaning, so an export of the list's filters has the list's rows. A range of the
    timestamp's index."""

    title = "date range"
    template = "admin/events/date_range_filter.html"
    field_name = "timestamp"
    since_parameter = "since"
    until_parameter = "until"
    hidden_params: list[tuple[str, str]]

    def __init__(self, request: HttpRequest, params: dict[str, Any], model: Any, model_admin: Any) -> None:
        super().__init__(request, params, model, model_admin)
        self.moments: dict[str, datetime] = {}
        self.raw: dict[str, str] = {}
        self.invalid: list[str] = []
        self.hidden_params = []
        for name in (self.since_parameter, self.until_parameter):
            if name not in params:
                continue
            value = str(params.pop(name)[-1])
            if not value.strip():
                continue
            moment = parse_moment(value) if searchable(value) else None
            if moment is None:
                self.invalid.append(value)  # shown next to the boxes; the list is not narrowed by it
                continue
            self.used_parameters[name] = value
            self.raw[name] = value
            self.moments[name] = moment

    def has_output(self) -> bool:
        return True

    def expected_parameters(self) -> list[str | None]:
        return [self.since_parameter, self.until_parameter]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.since_parameter in self.moments:
            queryset = queryset.filter(**{f"{self.field_name}__gte": self.moments[self.since_parameter]})
        if self.until_parameter in self.moments:
            queryset = queryset.filter(**{f"{self.field_name}__lt": self.moments[self.until_parameter]})
        return queryset

    def box_value(self, name: str) -> str:
        """A bound's value as a datetime-local box shows it: in the time zone a typed value is read in."""
        moment = self.moments.get(name)
        if moment is None:
            return ""
        moment = timezone.localtime(moment)
        if moment.second or moment.microsecond:
            return moment.strftime("%Y-%m-%dT%H:%M:%S")
        return moment.strftime("%Y-%m-%dT%H:%M")

    @property
    def zone_name(self) -> str:
        """The time zone the boxes are in."""
        return timezone.get_current_timezone_name()

    @property
    def since_value(self) -> str:
        return self.box_value(self.since_parameter)

    @property
    def until_value(self) -> str:
        return self.box_value(self.until_parameter)

    def choices(self, changelist: ChangeList) -> Iterator[Any]:
        mine = {self.since_parameter, self.until_parameter}
        self.hidden_params = [(k, str(v)) for k, v in changelist.params.items() if k not in mine]
        yield {
            "selected": not self.moments,
            "query_string": changelist.get_query_string(remove=list(mine)),
            "display": "Any time",
        }


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
