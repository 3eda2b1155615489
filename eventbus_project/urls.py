from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.permissions import AllowAny

from accounts.views import sign_out
from audit.api import (
    AuditExportView,
    AuditHeadView,
    AuditPublicKeyView,
    AuditTrailView,
    AuditVerifyView,
)
from events.api import EventDetailView, EventsView
from events.otlp import OtlpTracesView
from hitl.api import (
    ApprovalCancelView,
    ApprovalDecisionView,
    ApprovalRequestDetailView,
    ApprovalRequestsView,
    ApprovalRuleDetailView,
    ApprovalRulesEvaluateView,
    ApprovalRulesView,
)
from notify.views import preferences_page, slack_interactions
from ops.api import MetricsView, PrometheusView, StatsView
from ops.health import healthz
from ops.views import overview_data, overview_page

# One title across the admin and the pages (templates/live/base.html says the same).
SITE_TITLE = "Agent event bus"
admin.site.site_header = SITE_TITLE
admin.site.site_title = SITE_TITLE
admin.site.index_title = "Administration"
admin.site.site_url = "/"

urlpatterns = [
    # The operators' overview (staff): counts, the chain's state, links to every page.
    path("", overview_page, name="overview"),
    path("overview.json", overview_data, name="overview-data"),
    path("healthz", healthz, name="healthz"),
    path("metrics", PrometheusView.as_view(), name="prometheus-metrics"),
    # The admin's sign-out (its own link and the pages' button), which leaves a "signed out" note.
    path("admin/logout/", sign_out, name="sign-out"),
    path("admin/", admin.site.urls),
    # The pages for people: the approval queue and the live event feed (server-rendered, live over /ws/).
    # The operator's notification settings, linked from the approval page (served by notify, above hitl).
    path("hitl/notifications/", preferences_page, name="notify-preferences"),
    path("hitl/", include("hitl.urls")),
    path("events/", include("events.urls_pages")),
    path("api/events/", EventsView.as_view(), name="events"),
    # OpenTelemetry's OTLP/HTTP path: exporters append /v1/traces to their endpoint.
    path("v1/traces", OtlpTracesView.as_view(), name="otlp-traces"),
    path("api/events/<str:event_id>/", EventDetailView.as_view(), name="event"),
    path("api/audit/", AuditTrailView.as_view(), name="audit"),
    path("api/audit/export/", AuditExportView.as_view(), name="audit-export"),
    path("api/audit/verify/", AuditVerifyView.as_view(), name="audit-verify"),
    path("api/audit/head/", AuditHeadView.as_view(), name="audit-head"),
    path("api/audit/public-key/", AuditPublicKeyView.as_view(), name="audit-public-key"),
    path("api/metrics/", MetricsView.as_view(), name="metrics"),
    path("api/stats/", StatsView.as_view(), name="stats"),
    path("api/hitl/requests/", ApprovalRequestsView.as_view(), name="hitl-requests"),
    path("api/hitl/requests/<str:call_id>/", ApprovalRequestDetailView.as_view(), name="hitl-request"),
    path("api/hitl/requests/<str:call_id>/decision/", ApprovalDecisionView.as_view(), name="hitl-decision"),
    path("api/hitl/requests/<str:call_id>/cancel/", ApprovalCancelView.as_view(), name="hitl-cancel"),
    path("api/hitl/rules/", ApprovalRulesView.as_view(), name="hitl-rules"),
    path("api/hitl/rules/evaluate/", ApprovalRulesEvaluateView.as_view(), name="hitl-rules-evaluate"),
    path("api/hitl/rules/<int:rule_id>/", ApprovalRuleDetailView.as_view(), name="hitl-rule"),
    # Slack's interactivity request URL: buttons and modals, signed by Slack (notify.views).
    path("integrations/slack/interactions/", slack_interactions, name="slack-interactions"),
    path("api/schema/", SpectacularAPIView.as_view(permission_classes=[AllowAny]), name="schema"),
    path(
        "api/docs/",
        SpectacularSwaggerView.as_view(url_name="schema", permission_classes=[AllowAny]),
        name="docs",
    ),
]
