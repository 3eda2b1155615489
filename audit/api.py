"""The audit API: GET /api/audit/verify/ (more arrives with the auditors' issue)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from eventbus_project.async_views import AsyncAPIView, off_shared_thread
from events.permissions import HasMethodPermission
from events.serializers import ErrorSerializer

from .serializers import VerifyResultSerializer
from .services import audit_verify


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
