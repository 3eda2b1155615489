"""The admin of notifications: webhook endpoints (superusers), their deliveries and attempts with a
"send again" action, and operators' notification preferences.

Nothing here writes a model directly: saving an endpoint and sending again go through notify.services.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from core.errors import ApplicationError

from .models import NotificationPreference, SlackMessage, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from .services import webhook_endpoint_check, webhook_endpoint_save, webhook_redeliver


class SuperuserOnly:
    """Webhooks send every matching event elsewhere: superusers only, whatever the permissions say."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_active and request.user.is_superuser


class WebhookEndpointForm(forms.ModelForm):
    url = forms.URLField(
        max_length=2000, assume_scheme="https", help_text="https:// only (unless WEBHOOK_ALLOW_HTTP)."
    )
    event_types = forms.CharField(
        required=False,
        help_text="Comma-separated event types or categories (agent, session, tool, hitl, system, "
        "metrics); empty: every event.",
    )

    class Meta:
        model = WebhookEndpoint
        fields = ["url", "description", "event_types", "secret", "enabled"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            self.initial["event_types"] = ", ".join(self.instance.event_types or [])

    def clean_event_types(self) -> list[str]:
        raw = self.cleaned_data.get("event_types") or ""
        return [item.strip() for item in raw.split(",") if item.strip()]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if self.errors:
            return cleaned
        try:
            cleaned["event_types"] = webhook_endpoint_check(
                url=cleaned.get("url") or "",
                event_types=cleaned.get("event_types") or [],
                secret=cleaned.get("secret") or "",
            )
        except ApplicationError as error:
            field, _, message = error.message.partition(": ")
            if field in self.fields:
                self.add_error(field, message)
            else:
                raise forms.ValidationError(error.message) from None
        return cleaned


class WebhookAttemptInline(admin.TabularInline):
    model = WebhookAttempt
    extra = 0
    can_delete = False
    fields = ["attempted_at", "status_code", "latency_ms", "succeeded", "error", "response_excerpt"]
    readonly_fields = ("attempted_at", "status_code", "latency_ms", "succeeded", "error", "response_excerpt")
    ordering = ["-attempted_at", "-id"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(SuperuserOnly, admin.ModelAdmin):
    form = WebhookEndpointForm
    list_display = ["url", "enabled", "types", "disabled_reason", "updated_at"]
    list_filter = ["enabled"]
    readonly_fields = ["disabled_reason", "created_at", "updated_at"]

    @admin.display(description="event types")
    def types(self, obj: WebhookEndpoint) -> str:
        return ", ".join(obj.event_types or []) or "all"

    def change_view(self, request: HttpRequest, object_id: str, *args: Any, **kwargs: Any) -> Any:
        endpoint = WebhookEndpoint.objects.filter(pk=object_id).first() if object_id.isdigit() else None
        if (
            endpoint is not None
            and not endpoint.enabled
            and endpoint.disabled_reason
            and request.method == "GET"
        ):
            messages.warning(request, f"This endpoint is disabled. {endpoint.disabled_reason}")
        return super().change_view(request, object_id, *args, **kwargs)

    def save_model(self, request: HttpRequest, obj: WebhookEndpoint, form: Any, change: bool) -> None:
        data = form.cleaned_data
        existing = WebhookEndpoint.objects.get(pk=obj.pk) if change else None
        saved = webhook_endpoint_save(
            endpoint=existing,
            url=data["url"],
            event_types=data["event_types"],
            secret=data["secret"],
            description=data.get("description") or "",
            enabled=data.get("enabled", True),
        )
        obj.pk = saved.pk


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(SuperuserOnly, admin.ModelAdmin):
    list_display = [
        "position",
        "event_type",
        "endpoint",
        "delivered_at",
        "attempts",
        "next_attempt_at",
        "last_error",
    ]
    list_filter = ("endpoint", ("delivered_at", admin.EmptyFieldListFilter))
    search_fields = ["event_id", "event_type"]
    readonly_fields = [
        "endpoint",
        "position",
        "event_id",
        "event_type",
        "created_at",
        "delivered_at",
        "attempts",
        "next_attempt_at",
        "first_failed_at",
        "last_error",
    ]
    inlines = [WebhookAttemptInline]
    actions = ["send_again"]
    list_select_related = ["endpoint"]

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Send again")
    def send_again(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        if not (request.user.is_active and request.user.is_superuser):
            return
        count = webhook_redeliver(delivery_ids=list(queryset.values_list("pk", flat=True)[:10_000]))
        self.message_user(request, f"{count} deliveries will be sent again.", messages.SUCCESS)


@admin.register(NotificationPreference)
class NotificationPreferenceAdmin(admin.ModelAdmin):
    """Operators edit their own row; superusers everyone's."""

    list_display = ["user", "email", "slack", "tools"]
    fields = ["user", "email", "slack", "tools"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[NotificationPreference]:
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        return queryset.filter(user_id=request.user.pk)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [] if request.user.is_superuser else ["user"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        if request.user.is_superuser:
            return True
        has_row = NotificationPreference.objects.filter(user_id=int(request.user.pk or 0)).exists()
        return bool(request.user.has_perm("notify.change_notificationpreference")) and not has_row

    def save_model(self, request: HttpRequest, obj: NotificationPreference, form: Any, change: bool) -> None:
        from .services import preference_save

        if not request.user.is_superuser:
            obj.user_id = int(request.user.pk or 0)
        saved = preference_save(user_id=obj.user_id, email=obj.email, slack=obj.slack, tools=obj.tools)
        obj.pk = saved.pk


@admin.register(SlackMessage)
class SlackMessageAdmin(admin.ModelAdmin):
    """Which Slack message shows which request (read-only: the notifier keeps them)."""

    list_display = ["call_id", "channel", "ts", "posted_at"]
    search_fields = ["call_id"]
    list_per_page = 100
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
