"""The audit API: the trail (GET /api/audit/), its export (GET /api/audit/export/) and the check of
its hash chain (GET /api/audit/verify/)."""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.permissions import HasMethodPermission
from core.async_views import AsyncAPIView, off_shared_thread
from core.errors import ApplicationError
from core.negotiation import FirstRenderer
from events.filters import (
    PositionCursorPagination,
    StoredEventFilter,
    filter_parameters,
    filtered,
    validated_filters,
)
from events.serializers import ErrorSerializer, StoredEventOutSerializer

from .exports import DEFAULT_FORMAT, FORMATS, export_from_params
from .perms import EXPORT_AUDIT, VERIFY_AUDIT, VIEW_AUDIT
from .selectors import AuditEntryFilter, audit_entry_as_dict, audit_entry_rows
from .serializers import AuditEntryPageSerializer, VerifyResultSerializer
from .services import audit_verify

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
    required_permissions = {"GET": VIEW_AUDIT}

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


class AuditExportView(AsyncAPIView):
    """Every stored event matching the filters, streamed as a file."""

    permission_classes = [IsAuthenticated, HasMethodPermission]
    required_permissions = {"GET": EXPORT_AUDIT}
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
    required_permissions = {"GET": VERIFY_AUDIT}

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
    required_permissions = {"GET": VIEW_AUDIT}

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
    required_permissions = {"GET": VIEW_AUDIT}
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
