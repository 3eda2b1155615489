"""The operations API: /api/metrics/ (the design document's metrics), /api/stats/ (the bus, the store,
the live feed, the relay) and /metrics (Prometheus)."""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.permissions import HasMethodPermission
from audit.subscribers import metrics_collector
from core.async_views import AsyncAPIView, off_shared_thread
from core.negotiation import FirstRenderer
from events.event_bus import event_bus
from events.event_store import event_store
from events.live import live_feed
from events.perms import VIEW_EVENTS
from events.serializers import ErrorSerializer

from .metrics import CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE
from .metrics import database_figures, exposition, metrics_public, pending_approvals

# Metrics and statistics: operators and auditors read them (both hold events.view_storedevent, agents
# do not): the numbers are aggregates of the stored events either role may already read.
VIEW_METRICS_PERMISSION = VIEW_EVENTS

_METRICS_ERRORS = {
    401: OpenApiResponse(ErrorSerializer, description="No credentials, or an unknown or revoked token."),
    403: OpenApiResponse(ErrorSerializer, description="Not an operator or an auditor."),
}


class AgentProcessingSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    total_duration_ms = serializers.FloatField()
    success_count = serializers.IntegerField()
    failure_count = serializers.IntegerField()


class ToolExecutionsSerializer(serializers.Serializer):
    requested = serializers.IntegerField()
    completed = serializers.IntegerField()
    failed = serializers.IntegerField()


class HitlDecisionsSerializer(serializers.Serializer):
    APPROVE = serializers.IntegerField()
    EDIT = serializers.IntegerField()
    REJECT = serializers.IntegerField()


class MetricsSerializer(serializers.Serializer):
    """The design document's metrics structure."""

    agent_switches = serializers.DictField(
        child=serializers.IntegerField(), help_text='Switches by "<from>_to_<to>".'
    )
    agent_processing = serializers.DictField(child=AgentProcessingSerializer(), help_text="By agent.")
    tool_executions = serializers.DictField(child=ToolExecutionsSerializer(), help_text="By tool name.")
    hitl_decisions = serializers.DictField(child=HitlDecisionsSerializer(), help_text="By tool name.")


class StoreStatsSerializer(serializers.Serializer):
    """The store's writer in the answering process."""

    stored = serializers.IntegerField(help_text="Events this process's writer committed.")
    duplicates = serializers.IntegerField(help_text="Events skipped as already stored (same event_id).")
    rejected = serializers.IntegerField(help_text="Events the database refused.")
    batches = serializers.IntegerField()
    write_failures = serializers.IntegerField(help_text="Batch commits that failed and were retried.")
    buffered = serializers.IntegerField(help_text="Accepted, not yet committed.")
    last_batch_ms = serializers.FloatField()


class LiveStatsSerializer(serializers.Serializer):
    """This process's live feed (the WebSockets /ws/events/ and /ws/hitl/)."""

    connections = serializers.IntegerField(help_text="Connections following the feed.")
    position = serializers.IntegerField(allow_null=True, help_text="The last position handed out.")
    dispatched = serializers.IntegerField(help_text="Stored events handed out.")
    overflows = serializers.IntegerField(help_text="Connections that fell behind and were sent a gap.")


class StatsSerializer(serializers.Serializer):
    """The bus statistics (`event_bus.get_stats()`) of the answering process, its store, and approvals."""

    total_published = serializers.IntegerField()
    total_dropped = serializers.IntegerField()
    dropped_by_middleware = serializers.IntegerField()
    dropped_queue_full = serializers.IntegerField()
    lost_on_stopped_loop = serializers.IntegerField()
    middleware_errors = serializers.IntegerField()
    successful_handlers = serializers.IntegerField()
    failed_handlers = serializers.IntegerField()
    timed_out_handlers = serializers.IntegerField()
    events_by_type = serializers.DictField(child=serializers.IntegerField())
    queue_depth = serializers.IntegerField()
    queue_max_size = serializers.IntegerField()
    overflow_policy = serializers.ChoiceField(choices=["wait", "drop"])
    pending = serializers.IntegerField(help_text="Events accepted and not yet handled.")
    subscriptions = serializers.IntegerField()
    middleware = serializers.IntegerField(help_text="How many bus middleware are installed.")
    store = StoreStatsSerializer()
    pending_approvals = serializers.IntegerField(help_text="Approval requests waiting for a decision.")
    live = LiveStatsSerializer()
    distributed = serializers.DictField(
        required=False,
        help_text="With REDIS_URL, the distributed bus's relay: connected, channel, sent, received, "
        "duplicates, dropped, publish_failures, reconnects, commits_sent, commits_received, outbox.",
    )


class MetricsView(AsyncAPIView):
    """The design document's metrics, from the counters the store keeps."""

    permission_classes = [IsAuthenticated, HasMethodPermission]
    required_permissions = {"GET": VIEW_METRICS_PERMISSION}

    @extend_schema(
        operation_id="metrics",
        summary="Agent, tool and HITL metrics",
        description=(
            "`metrics_collector.get_metrics()`: agent switches, agent processing, tool executions and "
            "HITL decisions, counted from every stored event (all processes, across restarts)."
        ),
        responses={200: MetricsSerializer, **_METRICS_ERRORS},
        tags=["metrics"],
    )
    async def get(self, request: Request) -> Response:
        """Every metric, in the design document's structure."""
        return Response(await metrics_collector.aget_metrics())


class StatsView(AsyncAPIView):
    """The bus statistics of this process, with its store's writer and the pending approvals."""

    permission_classes = [IsAuthenticated, HasMethodPermission]
    required_permissions = {"GET": VIEW_METRICS_PERMISSION}

    @extend_schema(
        operation_id="stats",
        summary="Bus statistics",
        description=(
            "`event_bus.get_stats()` of the answering server process at the top level, its event store's "
            "writer under `store`, its live feed under `live`, with Redis its distributed bus's relay under "
            "`distributed`, and the number of approval requests waiting (from the database)."
        ),
        responses={200: StatsSerializer, **_METRICS_ERRORS},
        tags=["metrics"],
    )
    async def get(self, request: Request) -> Response:
        """The statistics as JSON."""
        pending = await off_shared_thread(pending_approvals)()
        return Response(
            {
                **event_bus.get_stats(),
                "store": event_store.get_stats(),
                "live": live_feed.get_stats(),
                "pending_approvals": pending,
            }
        )


class MetricsAccess(BasePermission):
    """Anyone when METRICS_PUBLIC is true (scrapers); otherwise users who may read the metrics."""

    def has_permission(self, request: Request, view: Any) -> bool:
        if metrics_public():
            return True
        user = request.user
        return bool(user and user.is_authenticated and user.has_perm(VIEW_METRICS_PERMISSION))


class PublicMetricsSchema(AutoSchema):
    """/metrics may be public (METRICS_PUBLIC): anonymous access is one of its security requirements."""

    def get_auth(self) -> list[dict[str, list[Any]]]:
        return [*super().get_auth(), {}]


class PrometheusView(AsyncAPIView):
    """GET /metrics: the Prometheus text format (audit.metrics renders it)."""

    permission_classes = [MetricsAccess]
    # Whatever a scraper's Accept says (Prometheus asks for openmetrics first): never a 406.
    content_negotiation_class = FirstRenderer
    schema = PublicMetricsSchema()

    @extend_schema(
        operation_id="prometheus_metrics",
        summary="Prometheus metrics",
        description=(
            "Text exposition format 0.0.4: bus counters and gauges, events stored, approval requests by "
            "status and request latencies. Public unless METRICS_PUBLIC=false, which limits it to "
            "operators and auditors."
        ),
        responses={
            (200, "text/plain"): OpenApiResponse(OpenApiTypes.STR, description="Prometheus text."),
            **_METRICS_ERRORS,
        },
        tags=["metrics"],
    )
    async def get(self, request: Request) -> HttpResponse:
        """The exposition, read at scrape time."""
        figures = await off_shared_thread(database_figures)()
        return HttpResponse(exposition(figures), content_type=PROMETHEUS_CONTENT_TYPE)
