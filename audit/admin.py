"""The admin of the audit trail: read-only, cheap on a long trail, and the chain's check on demand.

It shares core.admin_kit's machinery for big tables (no count of the whole table, no DISTINCT filter,
index-served search and filters, no add/change/delete for anyone). Verifying the chain walks every
entry, so it runs only when someone presses the button on its own page, never on a changelist load.

The rows show what each decision was (its tool, decision, outcome and who or what decided), read from
the entry's data by the database (a JSON key a column), so thirty decisions do not look alike and the
rows still never load the data itself.

Exports: the trail's list and the stored events' list both have "Export" links to `export_view` here
(the audit app sits below events and has the export, audit.exports): the same files as
GET /api/audit/export/, of the rows the list shows (its filters and search).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import django_filters
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.db.models.fields.json import KeyTextTransform
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.safestring import SafeString

from core.admin_kit import (
    DateRangeFilter,
    PositionFilter,
    ReadOnlyAdmin,
    ValueFilter,
    format_duration,
    format_moment,
    id_search,
    pretty_json,
    short,
)
from core.errors import ApplicationError
from events.event_types import EventType
from events.filters import MAX_ID_LENGTH, StoredEventFilter, validated_filters
from events.filters import PositionFilter as PositionParameter
from events.traces import correlation_trace_url, event_url, session_link, timeline_url

from .exports import DEFAULT_FORMAT, FORMATS, EventExport
from .models import AuditEntry
from .perms import EXPORT_AUDIT, VERIFY_AUDIT
from .services import AUDITED_EVENT_TYPES, audit_verify

VERIFY_PERMISSION = VERIFY_AUDIT
EXPORT_PERMISSION = EXPORT_AUDIT
# The query-string parameters of each list that an export carries over (the rest is paging, ordering).
LIST_FILTERS = {
    "events": ("event_category", "event_type", "source", "position__lte", "q", "since", "until"),
    "audit": ("event_type", "kind", "actor", "id__lte", "q", "since", "until"),
}
# The status a decision leaves a request in, when nothing else (an expiry, a policy) happened.
NATURAL_STATUS = {"APPROVE": "approved", "EDIT": "edited", "REJECT": "rejected"}
CHANGELISTS = {"events": "admin:events_storedevent_changelist", "audit": "admin:audit_auditentry_changelist"}
VIEW_PERMISSIONS = {"events": "events.view_storedevent", "audit": "audit.view_auditentry"}


class AuditTypeFilter(ValueFilter):
    title = "event type"
    parameter_name = "event_type"
    field_name = "event_type"
    # The types the trail keeps (and its purge checkpoints); the box takes any other.
    fixed_values = tuple(sorted(str(t) for t in {*AUDITED_EVENT_TYPES, EventType.AUDIT_PURGED}))
    placeholder = "another type, exactly"


class KindFilter(admin.SimpleListFilter):
    """Events or purge checkpoints: the two choices, no query."""

    title = "kind"
    parameter_name = "kind"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(str(value), str(label)) for value, label in AuditEntry.Kind.choices]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value is None:
            return queryset
        if value not in AuditEntry.Kind.values:
            return queryset.none()  # (and a NUL never reaches PostgreSQL)
        return queryset.filter(kind=value)


class EntryIdFilter(PositionFilter):
    """Entries up to an id: the way to any older part of the trail."""

    title = "up to id"
    parameter_name = "id__lte"
    field_name = "id"


class ActorFilter(ValueFilter):
    title = "actor"
    parameter_name = "actor"
    field_name = "actor"
    recent_values = True
    placeholder = "exact username"


class ListExportFilter(StoredEventFilter):
    """The filters of the events' and the trail's lists, for an export of the rows a list shows: the
    API's (`since`, `until`, `event_type`...) and the lists' own, each meaning what it means in the list."""

    source = django_filters.CharFilter(max_length=255)
    actor = django_filters.CharFilter(max_length=150)
    position__lte = PositionParameter(field_name="position", lookup_expr="lte")
    kind = django_filters.ChoiceFilter(choices=AuditEntry.Kind.choices, method="entries_only")
    id__lte = PositionParameter(method="entries_up_to")
    q = django_filters.CharFilter(max_length=MAX_ID_LENGTH, method="search")

    def entries_only(self, queryset: QuerySet[Any], name: str, value: str) -> QuerySet[Any]:
        # The export reads audit entries with these filters, and builds (unread) the events' query too.
        return queryset.filter(kind=value) if queryset.model is AuditEntry else queryset

    def entries_up_to(self, queryset: QuerySet[Any], name: str, value: int) -> QuerySet[Any]:
        return queryset.filter(id__lte=value) if queryset.model is AuditEntry else queryset

    def search(self, queryset: QuerySet[Any], name: str, value: str) -> QuerySet[Any]:
        return id_search(queryset, value)  # the lists' search


def export_params(scope: str, query: Any) -> dict[str, str]:
    """A list's filters and search, as its boxes read them (trimmed), for an export."""
    return {
        name: str(query.get(name)).strip()
        for name in LIST_FILTERS[scope]
        if str(query.get(name) or "").strip()
    }


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "when",
        "event_type",
        "tool",
        "decision",
        "actor_shown",
        "session",
        "correlation",
        "event",
        "source",
    )
    list_display_links = ("id",)
    sortable_by = ("id",)  # the primary key, both ways
    ordering = ("-id",)
    search_fields = ("session_id", "correlation_id", "event_id")  # see core.admin_kit.id_search
    search_help_text = (
        "A session id's beginning (anywhere in it on PostgreSQL), an exact correlation id, or an event "
        "id (a whole UUID, or its first 8 or more hex digits)."
    )
    list_filter = (AuditTypeFilter, KindFilter, ActorFilter, DateRangeFilter, EntryIdFilter)
    allowed_lookups = frozenset({"event_type", "kind", "actor", "id__lte", "since", "until"})
    change_list_template = "admin/audit/auditentry/change_list.html"
    change_form_template = "admin/audit/auditentry/change_form.html"
    readonly_fields = (
        "id",
        "kind",
        "event",
        "event_id",
        "event_type",
        "event_category",
        "when",
        "actor",
        "source",
        "session",
        "correlation",
        "prev_hash",
        "hash",
        "pretty_data",
    )
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "id",
                    "kind",
                    "event",
                    "event_id",
                    "event_type",
                    "event_category",
                    "when",
                    "actor",
                    "source",
                )
            },
        ),
        ("Tracing", {"fields": ("session", "correlation")}),
        ("Chain", {"fields": ("prev_hash", "hash")}),
        ("Data", {"fields": ("pretty_data",)}),
    )

    def has_verify_permission(self, request: HttpRequest) -> bool:
        """Who may run the chain's check (as GET /api/audit/verify/ requires)."""
        return request.user.has_perm(VERIFY_PERMISSION)

    def get_queryset(self, request: HttpRequest) -> QuerySet[AuditEntry]:
        # A few keys of the data, as columns: the database reads them out of the row it reads anyway.
        return (
            super()
            .get_queryset(request)
            .annotate(
                data_tool=KeyTextTransform("tool_name", "data"),
                data_decision=KeyTextTransform("decision", "data"),
                data_status=KeyTextTransform("status", "data"),
                data_channel=KeyTextTransform("channel", "data"),
            )
        )

    # Columns and fields

    @admin.display(description="timestamp (UTC)")
    def when(self, obj: AuditEntry) -> str:
        return format_moment(obj.timestamp)

    @admin.display(description="tool")
    def tool(self, obj: AuditEntry) -> str:
        return getattr(obj, "data_tool", None) or "—"

    @admin.display(description="decision")
    def decision(self, obj: AuditEntry) -> str:
        """The decision, and the request's status where it says more ("REJECT (expired)")."""
        decision = getattr(obj, "data_decision", None)
        status = getattr(obj, "data_status", None)
        if not decision:
            return status or "—"
        if status and status != NATURAL_STATUS.get(decision):
            return f"{decision} ({status})"
        return decision

    @admin.display(description="actor")
    def actor_shown(self, obj: AuditEntry) -> str:
        """The person; where none acted, what did (the expiry, a policy)."""
        if obj.actor:
            return obj.actor
        channel = getattr(obj, "data_channel", None)
        return {"expiry": "expiry", "policy": "approval policy"}.get(channel or "", "—")

    @admin.display(description="session")
    def session(self, obj: AuditEntry) -> SafeString | str:
        return session_link(obj.session_id)

    @admin.display(description="trace")  # its correlation id, which leads to the trace
    def correlation(self, obj: AuditEntry) -> SafeString | str:
        if not obj.correlation_id:
            return "—"
        return format_html(
            '<a href="{}" title="the trace: {}">{}</a>',
            correlation_trace_url(obj.correlation_id),
            obj.correlation_id,
            short(obj.correlation_id),
        )

    @admin.display(description="stored event")
    def event(self, obj: AuditEntry) -> SafeString | str:
        if obj.position is None:
            return "—"
        return format_html('<a href="{}">#{}</a>', event_url(obj.position), obj.position)

    @admin.display(description="data")
    def pretty_data(self, obj: AuditEntry) -> SafeString:
        return pretty_json(obj.data)

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        extra = {
            **(extra_context or {}),
            "may_verify": self.has_verify_permission(request),
            "export_scope": "audit",
        }
        return super().changelist_view(request, extra)

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
            context["trace_url"] = correlation_trace_url(obj.correlation_id) if obj.correlation_id else None
            context["timeline_url"] = timeline_url(obj.session_id) if obj.session_id else None
        context["may_verify"] = self.has_verify_permission(request)
        return super().render_change_form(request, context, add, change, form_url, obj)

    # Verification

    def get_urls(self) -> list[URLPattern]:
        def wrap(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
            return self.admin_site.admin_view(view)

        info = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path("verify/", wrap(self.verify_view), name=f"{info}_verify"),
            path("export/", wrap(self.export_view), name=f"{info}_export"),
            *super().get_urls(),
        ]

    def export_view(self, request: HttpRequest) -> HttpResponseBase:
        """The rows a list shows (`scope`: the trail, or the stored events), as a download in the
        formats of GET /api/audit/export/, streamed page by page: the trail's rows are audit entries
        (with actor and hashes), the events' rows stored events (with actor)."""
        scope = request.GET.get("scope") or "audit"
        if scope not in LIST_FILTERS:
            scope = "audit"
        if not (request.user.has_perm(VIEW_PERMISSIONS[scope]) and request.user.has_perm(EXPORT_PERMISSION)):
            raise PermissionDenied
        params = export_params(scope, request.GET)
        lists = {
            "events": "admin:events_storedevent_changelist",
            "audit": "admin:audit_auditentry_changelist",
        }
        back = reverse(lists[scope])
        name = request.GET.get("format") or DEFAULT_FORMAT
        export_format = FORMATS.get(name)
        try:
            if export_format is None:
                raise ApplicationError(f"format: choose one of {', '.join(FORMATS)}")
            filterset = validated_filters(ListExportFilter, params)
        except ApplicationError as error:
            messages.error(request, f"Nothing was exported: {error.message}")
            return HttpResponseRedirect(f"{back}?{urlencode(params)}" if params else back)
        export = EventExport(filterset=filterset, export_format=export_format, audit_only=scope == "audit")
        response = StreamingHttpResponse(export.achunks(), content_type=export_format.content_type)
        response["Content-Disposition"] = f'attachment; filename="{export.filename}"'
        response["Cache-Control"] = "no-store"
        return response

    def verify_view(self, request: HttpRequest) -> HttpResponse:
        """GET: what the check does, and its button. POST: walk the chain and show the outcome."""
        if not (self.has_view_permission(request) and self.has_verify_permission(request)):
            raise PermissionDenied
        result = None
        elapsed = ""
        broken_url = None
        if request.method == "POST":
            started = time.perf_counter()
            result = audit_verify()
            elapsed = format_duration_seconds(time.perf_counter() - started)
            if result.broken_entry is not None:
                broken_url = reverse("admin:audit_auditentry_change", args=[result.broken_entry])
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Verify the audit chain",
            "subtitle": None,
            "result": result,
            "elapsed": elapsed,
            "broken_url": broken_url,
        }
        return TemplateResponse(request, "admin/audit/auditentry/verify.html", context)


def format_duration_seconds(seconds: float) -> str:
    """How long the check took, without the sign a step's duration carries."""
    return format_duration(timedelta(seconds=seconds)).lstrip("+")
