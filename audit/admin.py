"""The admin of the audit trail: read-only, cheap on a long trail, and the chain's check on demand.

It shares core.admin_kit's machinery for big tables (no count of the whole table, no DISTINCT filter,
index-served search and filters, no add/change/delete for anyone). Verifying the chain walks every
entry, so it runs only when someone presses the button on its own page, never on a changelist load.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from core.admin_kit import (
    PositionFilter,
    ReadOnlyAdmin,
    ValueFilter,
    format_duration,
    format_moment,
    pretty_json,
    short,
)
from events.event_types import EventType
from events.traces import correlation_trace_url, event_url, timeline_url

from .models import AuditEntry
from .perms import VERIFY_AUDIT
from .services import AUDITED_EVENT_TYPES, audit_verify

VERIFY_PERMISSION = VERIFY_AUDIT


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


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "kind",
        "when",
        "event_type",
        "actor",
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
        "An exact session id or correlation id, or an event id (a whole UUID, or its first 8 or more "
        "hex digits)."
    )
    list_filter = (AuditTypeFilter, KindFilter, ActorFilter, EntryIdFilter)
    allowed_lookups = frozenset({"event_type", "kind", "actor", "id__lte"})
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

    # Columns and fields

    @admin.display(description="timestamp (UTC)")
    def when(self, obj: AuditEntry) -> str:
        return format_moment(obj.timestamp)

    @admin.display(description="session")
    def session(self, obj: AuditEntry) -> SafeString | str:
        if not obj.session_id:
            return "—"
        return format_html(
            '<a href="{}" title="the session\'s timeline: {}">{}</a>',
            timeline_url(obj.session_id),
            obj.session_id,
            short(obj.session_id),
        )

    @admin.display(description="correlation")
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
        extra = {**(extra_context or {}), "may_verify": self.has_verify_permission(request)}
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
        def wrap(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
            return self.admin_site.admin_view(view)

        info = f"{self.opts.app_label}_{self.opts.model_name}"
        return [path("verify/", wrap(self.verify_view), name=f"{info}_verify"), *super().get_urls()]

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
