"""The audit API: the trail (GET /api/audit/), its export (GET /api/audit/export/) and the check of
its hash chain (GET /api/audit/verify/)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.http import HttpResponse, StreamingHttpResponse
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from eventbus_project.async_views import AsyncAPIView, off_shared_thread
from eventbus_project.exceptions import ApplicationError
from events.event_bus import event_bus
from events.event_store import event_store
from events.filters import (
    PositionCursorPagination,
    StoredEventFilter,
    filter_parameters,
    filtered,
    validated_filters,
)
from events.live import live_feed
from events.permissions import HasMethodPermission
from events.serializers import ErrorSerializer, StoredEventOutSerializer

from .exports import DEFAULT_FORMAT, FORMATS, export_from_params
from .metrics import CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE
from .metrics import database_figures, exposition, metrics_public, pending_approvals
from .selectors import AuditEntryFilter, audit_entry_as_dict, audit_entry_rows
from .serializers import AuditEntryPageSerializer, VerifyResultSerializer
from .services import audit_verify
from .subscribers import metrics_collector

_READ_ERRORS = {
    400: OpenApiResponse(ErrorSerializer, description="A query parameter is invalid; `errors` names it."),
    401: OpenApiResponse(ErrorSerializer, description="Not signed in, no token, or an unknown one."),
    403: OpenApiResponse(ErrorSerializer, description="Signed in without the permission."),
}


class AuditEntryCursorPagination(PositionCursorPagination):
    ordering = "id"


class AuditTrailView(AsyncAPIView):
    """The audit trail: critical events with who acted, in chain order."""

    permission_classes = [IsAuthenticated, HasMethodPermission]
    required_permissions = {"GET": "audit.view_auditentry"}

    @extend_schema(
        operation_id="audit_list",
        summary="List the audit trail",
        description=(
            "Audit entries (critical events with the acting user, and purge checkpoints) matching every "
            "filter given, in chain order (oldest first), `limit` per page; follow `next` to the end. "
            "`after` is an event position, so it leaves out checkpoints."
        ),
        parameters=[*filter_parameters(AuditEntryFilter), *AuditEntryCursorPagination.query_parameters()],
        responses={200: AuditEntryPageSerializer, **_READ_ERRORS},
        tags=["audit"],
    )
    async def get(self, request: Request) -> Response:
        """A page of the audit entries matching the filters."""
        return Response(await off_shared_thread(self.entries_page)(request))

    def entries_page(self, request: Request) -> dict[str, Any]:
        """The page as JSON: one query whatever its size."""
        filterset = validated_filters(AuditEntryFilter, request.query_params)
        paginator = AuditEntryCursorPagination()
        rows = paginator.paginate_queryset(filtered(filterset, audit_entry_rows()), request, view=self) or []
        return {
            "next": paginator.get_next_link(),
            "previous": paginator.get_previous_link(),
            "results": [audit_entry_as_dict(row) for row in rows],
        }


class FirstRenderer(BaseContentNegotiation):
    """No negotiation: `format` names the export's file format, not one of DRF's renderers (DRF would
    answer 404 to ?format=csv), and an `Accept: text/csv` must not get a 406. Errors are JSON."""

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        renderer = next(iter(renderers))
        return renderer, renderer.media_type


class AuditExportView(AsyncAPIView):
    """Every stored event matching the filters, streamed as a file."""

    permission_classes = [IsAuthenticated, HasMethodPermission]
    required_permissions = {"GET": "audit.export_audit"}
    content_negotiation_class = FirstRenderer

    @extend_schema(
        operation_id="audit_export",
        summary="Export stored events",
        description=(
            "Every stored event matching the filters of `/api/events/`, in position order, streamed in "
            "constant memory as a download (`events-<UTC time>.<format>`). Each row is the contract's "
            "event with its `position`. CSV: a header row of those keys, `data` as compact JSON, every "
            "value quoted except nulls (empty, unquoted). NDJSON: one object per line. JSON: one array. "
            "If the download breaks off, ask again with `after` set to the last position received."
        ),
        parameters=[
            OpenApiParameter(
                "format",
                {"type": "string", "enum": list(FORMATS)},
                description=f"The file's format ({DEFAULT_FORMAT} by default).",
            ),
            OpenApiParameter(
                "audit_only",
                OpenApiTypes.BOOL,
                description="Only the events of the audit trail (critical events with the acting user).",
            ),
            *filter_parameters(StoredEventFilter),
        ],
        responses={
            (200, FORMATS["csv"].media_type): OpenApiResponse(OpenApiTypes.STR, description="format=csv"),
            (200, FORMATS["ndjson"].media_type): OpenApiResponse(
                OpenApiTypes.STR, description="format=ndjson: one event object per line."
            ),
            (200, FORMATS["json"].media_type): OpenApiResponse(
                StoredEventOutSerializer(many=True), description="format=json: one array of events."
            ),
            **_READ_ERRORS,
        },
        tags=["audit"],
    )
    async def get(self, request: Request) -> StreamingHttpResponse:
        """The file, streamed: headers at once, then page after page as they are read."""
        export = export_from_params(request.query_params)  # validation only: no database work
        response = StreamingHttpResponse(export.achunks(), content_type=export.format.content_type)
        response["Content-Disposition"] = f'attachment; filename="{export.filename}"'
        response["Cache-Control"] = "no-store"
        return response


class AuditVerifyView(AsyncAPIView):
    """Recompute the audit trail's hash chain; async, since a long trail takes a while to walk."""

    permission_classes = [IsAuthenticated, HasMethodPermission]
    required_permissions = {"GET": "audit.verify_audit"}

    @extend_schema(
        operation_id="audit_verify",
        summary="Verify the audit chain",
        description=(
            "Walks every audit entry in order and recomputes its hash. `ok` is true when the chain "
            "holds; otherwise `broken_entry` names the first entry that fails and `reason` says how."
        ),
        responses={
            200: VerifyResultSerializer,
            401: OpenApiResponse(ErrorSerializer),
            403: OpenApiResponse(ErrorSerializer),
        },
        tags=["audit"],
    )
    async def get(self, request: Request) -> Response:
        """The result of the check, 200 whether or not the chain holds."""
        result = await off_shared_thread(audit_verify)()
        return Response(result.as_dict())


HEAD_MESSAGE_DOC = (
    "The signature (standard base64, Ed25519) covers the UTF-8 bytes of the canonical JSON (keys sorted, "
    'no spaces) of `{"type": "eventbus.audit.head", "entry_id", "hash", "count", "signed_at", "key_id"}`; '
    "`key_id` is the SHA-256 (hex) of the raw 32-byte public key (GET /api/audit/public-key/). `count` is "
    "the number of entries the chain has had up to `entry_id`, purged ones included. See docs/auditors.md."
)


class SignedHeadSerializer(serializers.Serializer):
    entry_id = serializers.IntegerField(allow_null=True, help_text="The newest entry (null: empty trail).")
    hash = serializers.CharField(help_text="Its hash (64 hex digits).")
    count = serializers.IntegerField(help_text="Entries the chain has had up to it, purged ones included.")
    signed_at = serializers.CharField(help_text="When this head was signed (ISO 8601, UTC).")
    key_id = serializers.CharField(allow_null=True, help_text="SHA-256 of the public key; null: unsigned.")
    signature = serializers.CharField(allow_null=True, help_text="Ed25519, base64; null: no key set.")
    signed = serializers.BooleanField(help_text="False when AUDIT_SIGNING_KEY_FILE is not set.")


def _head_for(entry_id: str | None) -> dict[str, Any]:
    from .models import AuditEntry
    from .services import chain_count_at, current_head
    from .signing import make_head

    if entry_id is None:
        return current_head()
    if not entry_id.isdigit() or len(entry_id) > 19:
        raise ApplicationError(
            "entry_id: Enter an entry id (a positive integer).",
            extra={"errors": [{"field": "entry_id", "message": "Enter a positive integer."}]},
        )
    entry = AuditEntry.objects.filter(id=int(entry_id)).values("id", "hash").first()
    if entry is None:
        raise ApplicationError(f"No audit entry {entry_id}.", code="not_found", status=404)
    return make_head(entry["id"], entry["hash"], chain_count_at(entry["id"]))


class AuditHeadView(AsyncAPIView):
    """The chain's newest entry, signed: what an auditor keeps to show later that nothing was cut off."""

    permission_classes = [IsAuthenticated, HasMethodPermission]
    required_permissions = {"GET": "audit.view_auditentry"}

    @extend_schema(
        operation_id="audit_head",
        summary="The signed head of the audit chain",
        description=(
            "The newest audit entry's id and hash and the chain's count, signed with the server's key "
            "(AUDIT_SIGNING_KEY_FILE; without one `signature` and `key_id` are null and `signed` false). "
            "With `entry_id`, a head signed now for that entry (the last row of a CSV export: save it "
            "beside the file as `<file>.head.json` for verify_export). " + HEAD_MESSAGE_DOC
        ),
        parameters=[
            OpenApiParameter(
                "entry_id", OpenApiTypes.INT, description="Sign the head at this entry instead of the newest."
            )
        ],
        responses={200: SignedHeadSerializer, 404: OpenApiResponse(ErrorSerializer), **_READ_ERRORS},
        tags=["audit"],
    )
    async def get(self, request: Request) -> Response:
        """The signed head."""
        head = await off_shared_thread(_head_for)(request.query_params.get("entry_id"))
        return Response({**head, "signed": head["signature"] is not None})


class AuditPublicKeyView(AsyncAPIView):
    """The public half of the audit signing key."""

    permission_classes = [IsAuthenticated, HasMethodPermission]
    required_permissions = {"GET": "audit.view_auditentry"}
    content_negotiation_class = FirstRenderer

    @extend_schema(
        operation_id="audit_public_key",
        summary="The audit signing key's public key",
        description=(
            "The Ed25519 public key (PEM, SubjectPublicKeyInfo) that signs heads and purge permits, as "
            "`application/x-pem-file`; `X-Audit-Key-Id` is its key id. With `format=json`: "
            "`{algorithm, key_id, public_key, rotations}`, `rotations` being every key rotation record "
            "(signed by both keys), so older exports stay verifiable. 404 `no_signing_key` without a key."
        ),
        parameters=[OpenApiParameter("format", {"type": "string", "enum": ["pem", "json"]})],
        responses={
            (200, "application/x-pem-file"): OpenApiResponse(OpenApiTypes.STR, description="The PEM."),
            (200, "application/json"): OpenApiResponse(OpenApiTypes.OBJECT, description="format=json"),
            404: OpenApiResponse(ErrorSerializer, description="No signing key is configured."),
            **_READ_ERRORS,
        },
        tags=["audit"],
    )
    async def get(self, request: Request) -> HttpResponse:
        """The PEM, or the key with its rotations as JSON."""
        wanted = request.query_params.get("format") or "pem"
        if wanted not in ("pem", "json"):
            raise ApplicationError(
                "format: Choose pem or json.",
                extra={"errors": [{"field": "format", "message": "Choose pem or json."}]},
            )
        key, rotations = await off_shared_thread(_public_key)()
        if wanted == "json":
            return Response(
                {
                    "algorithm": "Ed25519",
                    "key_id": key.key_id,
                    "public_key": key.public_pem,
                    "rotations": rotations,
                }
            )
        response = HttpResponse(key.public_pem, content_type="application/x-pem-file")
        response["X-Audit-Key-Id"] = key.key_id
        return response


def _public_key() -> tuple[Any, list[dict[str, Any]]]:
    from .models import KeyRotation
    from .signing import signing_key

    key = signing_key()
    if key is None:
        raise ApplicationError(
            "No audit signing key is configured (AUDIT_SIGNING_KEY_FILE).", code="no_signing_key", status=404
        )
    return key, list(KeyRotation.objects.order_by("id").values_list("record", flat=True))


# Metrics and statistics: operators and auditors read them (both hold events.view_storedevent, agents
# do not): the numbers are aggregates of the stored events either role may already read.
VIEW_METRICS_PERMISSION = "events.view_storedevent"

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
