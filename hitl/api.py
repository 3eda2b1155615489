"""The approval requests API: agents ask and wait, operators decide.

Async views (core.async_views): the long-poll holds no thread and no database connection
while it waits, and the services run in worker threads, never on the thread sync views share.
An agent's Bearer `POST /api/hitl/requests/` is answered beside Django's request cycle
(hitl.fast_request) by the same steps as ApprovalRequestsView.post (check_may_request, request_input,
request_create), so both give the same answers.
"""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from core.async_views import AsyncAPIView, off_shared_thread
from core.errors import ApplicationError
from core.json_input import invalid, json_type
from core.params import int_param, seconds_param
from core.parsers import StrictJSONParser
from events.serializers import ErrorSerializer

from .inputs import ApprovalRequestIn, DecisionIn, PolicyProbeIn, RuleIn, decision_input, validated
from .models import ApprovalRequest, ApprovalRule, DecisionChannel, OnExpire
from .perms import REQUEST_APPROVAL
from .policies import policy_dry_run, rule_as_dict, rule_create, rule_delete, rule_update
from .selectors import (
    VIEW_PERMISSION,
    approval_as_dict,
    approval_filters,
    approval_list,
    approval_visible_get,
)
from .services import DECIDE_PERMISSION, approval_cancel, approval_decide, approval_request, await_decision

REQUEST_PERMISSION = REQUEST_APPROVAL
MAX_WAIT_S = 60
MAX_PAGE = 200
MAX_TEXT = 10_000
MAX_ID = 2**63 - 1  # a BIGINT: a larger `before` is a 400 here, not an overflow in the database
DECISIONS = ["APPROVE", "EDIT", "REJECT"]


class ApprovalOut(serializers.Serializer):
    user = serializers.CharField()
    decided_at = serializers.DateTimeField()


class ApprovalRequestOut(serializers.Serializer):
    """An approval request as the contract's JSON."""

    call_id = serializers.CharField()
    session_id = serializers.CharField()
    correlation_id = serializers.CharField(allow_null=True)
    agent = serializers.CharField()
    tool_name = serializers.CharField()
    arguments = serializers.DictField()
    modified_args = serializers.DictField(allow_null=True)
    status = serializers.ChoiceField(
        choices=["pending", "approved", "edited", "rejected", "expired", "cancelled"]
    )
    reason = serializers.CharField()
    comment = serializers.CharField()
    decided_by = serializers.CharField(allow_null=True)
    channel = serializers.CharField(allow_null=True)
    created_at = serializers.DateTimeField()
    decided_at = serializers.DateTimeField(allow_null=True)
    expires_at = serializers.DateTimeField()
    on_expire = serializers.ChoiceField(choices=OnExpire.values)
    approvals_required = serializers.IntegerField(min_value=1)
    approvals = ApprovalOut(many=True)
    rule = serializers.CharField(
        allow_null=True, help_text='"<name>@<version>", "standing:<id>", or null (no rule matched).'
    )
    args_sha256 = serializers.CharField(allow_null=True)
    approver_group = serializers.CharField(allow_null=True)
    escalate_to_group = serializers.CharField(allow_null=True)
    escalated_at = serializers.DateTimeField(allow_null=True)
    risk = serializers.ChoiceField(
        choices=["low", "medium", "high"],
        allow_null=True,
        help_text='The tool\'s risk level (HITL_TOOL_RISK, else the "x-risk" of its schema), or null.',
    )


class ApprovalPageOut(serializers.Serializer):
    results = ApprovalRequestOut(many=True)
    next = serializers.CharField(allow_null=True)


_ERRORS = {
    400: OpenApiResponse(ErrorSerializer, description="Invalid input; `errors` names the fields."),
    401: OpenApiResponse(ErrorSerializer),
    403: OpenApiResponse(ErrorSerializer),
}


class CanSeeApprovals(BasePermission):
    """Operators see and decide; agents (and others with the request permission) ask and see their own."""

    message = "You need to be an operator, or an agent asking about its own requests."

    def has_permission(self, request: Request, view: Any) -> bool:
        return may_see_approvals(request.user)


def may_see_approvals(user: Any) -> bool:
    """Operators, and agents (their own requests), may read approval requests."""
    return bool(
        user.has_perm(VIEW_PERMISSION)
        or user.has_perm(REQUEST_PERMISSION)
        or user.has_perm(DECIDE_PERMISSION)
    )


def _body(request: Request) -> Any:
    # Parsed by StrictJSONParser: depth, NUL, lone surrogates already refused.
    return json_object(request.data)


def json_object(data: Any) -> dict[str, Any]:
    """A parsed body that must be a JSON object; 400 naming `body` otherwise."""
    if type(data) is not dict:
        raise invalid("body", f"must be a JSON object, not {json_type(data)}")
    return data


class ApprovalRequestsView(AsyncAPIView):
    """List approval requests, or ask for one."""

    permission_classes = [IsAuthenticated, CanSeeApprovals]
    parser_classes = [StrictJSONParser]

    @extend_schema(
        operation_id="hitl_requests_list",
        summary="List approval requests",
        parameters=[
            OpenApiParameter(
                "status",
                OpenApiTypes.STR,
                enum=["pending", "approved", "edited", "rejected", "expired", "cancelled"],
            ),
            OpenApiParameter("tool_name", OpenApiTypes.STR),
            OpenApiParameter("agent", OpenApiTypes.STR),
            OpenApiParameter("session_id", OpenApiTypes.STR),
            OpenApiParameter("limit", OpenApiTypes.INT, description=f"At most {MAX_PAGE} (50 by default)."),
            OpenApiParameter(
                "before", OpenApiTypes.INT, description="The `next` cursor of the previous page."
            ),
        ],
        responses={200: ApprovalPageOut, **_ERRORS},
        tags=["hitl"],
    )
    async def get(self, request: Request) -> Response:
        """Newest first; operators see all, an agent its own."""
        params = request.query_params
        limit = int_param(params.get("limit"), "limit", default=50, low=1, high=MAX_PAGE)
        before = int_param(params.get("before"), "before", default=None, low=1, high=MAX_ID)
        filters = approval_filters(params)
        results, next_before = await off_shared_thread(approval_list)(
            user=request.user, filters=filters, before_id=before, limit=limit
        )
        next_url = None
        if next_before is not None:
            query = params.copy()
            query["before"] = str(next_before)
            next_url = request.build_absolute_uri(f"{reverse('hitl-requests')}?{query.urlencode()}")
        return Response({"results": results, "next": next_url})

    @extend_schema(
        operation_id="hitl_requests_create",
        summary="Ask for approval of a tool call",
        description="Idempotent on call_id: the same call again answers 200 with the existing request.",
        request=ApprovalRequestIn,
        responses={
            201: ApprovalRequestOut,
            200: ApprovalRequestOut,
            409: OpenApiResponse(ErrorSerializer),
            **_ERRORS,
        },
        tags=["hitl"],
    )
    async def post(self, request: Request) -> Response:
        """201 with the new request; 200 with the existing one for a known call_id."""
        check_may_request(request.user)
        data = request_input(_body(request))
        approval, created = await off_shared_thread(request_create)(data=data, user=request.user)
        return Response(approval_as_dict(approval), status=201 if created else 200)


# The steps of POST /api/hitl/requests/ after authentication, in this order, shared with the agents'
# fast path (hitl.fast_request), so that both answer the same to every input.


def check_may_request(user: Any) -> None:
    """403 unless `user` may ask for approvals (the agents)."""
    if not user.has_perm(REQUEST_PERMISSION):
        raise ApplicationError("only agents may ask for approvals", code="permission_denied", status=403)


def request_input(payload: dict[str, Any]) -> dict[str, Any]:
    """The body of a request for approval (a JSON object), checked: its fields, or a 400 naming them."""
    return validated(ApprovalRequestIn, payload)


def request_create(*, data: dict[str, Any], user: Any) -> tuple[ApprovalRequest, bool]:
    """hitl.services.approval_request with the checked input, as `user` (in a worker thread)."""
    return approval_request(
        call_id=data["call_id"],
        session_id=data["session_id"],
        tool_name=data["tool_name"],
        arguments=data["arguments"],
        reason=data["reason"],
        agent=data["agent"],
        correlation_id=data["correlation_id"],
        timeout_s=data["timeout_s"],
        on_expire=data["on_expire"],
        requested_by=user,
        causation_id=data["causation_id"],
    )


class ApprovalRequestDetailView(AsyncAPIView):
    """One approval request; with ?wait=N, held until it is decided (at most N seconds, N <= 60)."""

    permission_classes = [IsAuthenticated, CanSeeApprovals]
    parser_classes = [StrictJSONParser]

    @extend_schema(
        operation_id="hitl_requests_retrieve",
        summary="An approval request, optionally waiting for its decision",
        parameters=[
            OpenApiParameter(
                "wait",
                {"type": "number", "minimum": 0, "maximum": MAX_WAIT_S},
                description=f"Seconds to hold, at most {MAX_WAIT_S}.",
            )
        ],
        responses={200: ApprovalRequestOut, 404: OpenApiResponse(ErrorSerializer), **_ERRORS},
        tags=["hitl"],
    )
    async def get(self, request: Request, call_id: str) -> Response:
        """The request as it is now, or once decided when `wait` is given."""
        wait = seconds_param(request.query_params.get("wait"), "wait", high=MAX_WAIT_S)
        approval = await off_shared_thread(approval_visible_get)(user=request.user, call_id=call_id)
        if wait and approval.is_pending:
            # Holds no thread and no connection while it waits: a future resolved by the bus.
            await await_decision(call_id, timeout=wait)
            approval = await off_shared_thread(approval_visible_get)(user=request.user, call_id=call_id)
        return Response(approval_as_dict(approval))


class ApprovalDecisionView(AsyncAPIView):
    """An operator's decision: the approver is the authenticated user, whatever the body says."""

    permission_classes = [IsAuthenticated, CanSeeApprovals]
    parser_classes = [StrictJSONParser]

    @extend_schema(
        operation_id="hitl_requests_decide",
        summary="Approve, edit or reject",
        request=DecisionIn,
        responses={
            200: ApprovalRequestOut,
            404: OpenApiResponse(ErrorSerializer),
            409: OpenApiResponse(ErrorSerializer),
            **_ERRORS,
        },
        tags=["hitl"],
    )
    async def post(self, request: Request, call_id: str) -> Response:
        """200 with the decided request; 409 when it was decided already or has expired."""
        data = decision_input(_body(request))
        approval = await off_shared_thread(approval_decide)(
            call_id=call_id,
            user=request.user,
            decision=data["decision"],
            modified_args=data["modified_args"],
            comment=data["comment"],
            channel=DecisionChannel.API,
            remember=data["remember"],
        )
        return Response(approval_as_dict(approval))


class ApprovalCancelView(AsyncAPIView):
    """The agent that asked withdraws its request."""

    permission_classes = [IsAuthenticated, CanSeeApprovals]
    parser_classes = [StrictJSONParser]

    @extend_schema(
        operation_id="hitl_requests_cancel",
        summary="Withdraw a pending request",
        request=None,
        responses={
            200: ApprovalRequestOut,
            404: OpenApiResponse(ErrorSerializer),
            409: OpenApiResponse(ErrorSerializer),
            **_ERRORS,
        },
        tags=["hitl"],
    )
    async def post(self, request: Request, call_id: str) -> Response:
        """200 with the cancelled request; 409 when it is no longer pending."""
        approval = await off_shared_thread(approval_cancel)(call_id=call_id, user=request.user)
        return Response(approval_as_dict(approval))


# Approval rules


RULE_PERMISSION = "hitl.change_approvalrule"


class CanChangeRules(BasePermission):
    """Operators with hitl.change_approvalrule read and write the rules, and try them."""

    message = "You need the permission hitl.change_approvalrule (operators have it)."

    def has_permission(self, request: Request, view: Any) -> bool:
        return bool(request.user.has_perm(RULE_PERMISSION))


class RuleOut(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    priority = serializers.IntegerField()
    enabled = serializers.BooleanField()
    tool = serializers.CharField()
    agent = serializers.CharField()
    condition = serializers.CharField()
    action = serializers.ChoiceField(choices=["approve", "reject", "require"])
    approvals_required = serializers.IntegerField()
    approver_group = serializers.CharField(allow_null=True)
    escalate_after_s = serializers.FloatField(allow_null=True)
    escalate_to_group = serializers.CharField(allow_null=True)
    message = serializers.CharField()
    version = serializers.IntegerField()
    rule = serializers.CharField(help_text='"<name>@<version>"')
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class PolicyOutcomeOut(serializers.Serializer):
    action = serializers.ChoiceField(choices=["approve", "reject", "require"])
    rule = serializers.CharField(allow_null=True)
    approvals_required = serializers.IntegerField()
    approver_group = serializers.CharField(allow_null=True)


def _rules() -> list[dict[str, Any]]:
    return [rule_as_dict(rule) for rule in ApprovalRule.objects.order_by("-priority", "id")]


def _rule(rule_id: int) -> dict[str, Any]:
    rule = ApprovalRule.objects.filter(pk=rule_id).first()
    if rule is None:
        raise ApplicationError(f"no approval rule has id {rule_id}", code="not_found", status=404)
    return rule_as_dict(rule)


class ApprovalRulesView(AsyncAPIView):
    """The approval policy's rules, in the order they are tried."""

    permission_classes = [IsAuthenticated, CanChangeRules]
    parser_classes = [StrictJSONParser]

    @extend_schema(
        operation_id="hitl_rules_list",
        summary="List approval rules (highest priority first)",
        responses={200: RuleOut(many=True), **_ERRORS},
        tags=["hitl"],
    )
    async def get(self, request: Request) -> Response:
        """Every rule, enabled or not, in the order they are tried."""
        return Response(await off_shared_thread(_rules)())

    @extend_schema(
        operation_id="hitl_rules_create",
        summary="Add an approval rule",
        request=RuleIn,
        responses={201: RuleOut, 409: OpenApiResponse(ErrorSerializer), **_ERRORS},
        tags=["hitl"],
    )
    async def post(self, request: Request) -> Response:
        """201 with the rule (version 1); 400 naming the field; 409 when the name is taken."""
        rule = await off_shared_thread(rule_create)(data=_body(request), user=request.user)
        return Response(rule_as_dict(rule), status=201)


class ApprovalRuleDetailView(AsyncAPIView):
    """One approval rule."""

    permission_classes = [IsAuthenticated, CanChangeRules]
    parser_classes = [StrictJSONParser]

    @extend_schema(
        operation_id="hitl_rules_retrieve",
        summary="An approval rule",
        responses={200: RuleOut, 404: OpenApiResponse(ErrorSerializer), **_ERRORS},
        tags=["hitl"],
    )
    async def get(self, request: Request, rule_id: int) -> Response:
        return Response(await off_shared_thread(_rule)(rule_id))

    @extend_schema(
        operation_id="hitl_rules_update",
        summary="Replace an approval rule (its version goes up)",
        request=RuleIn,
        responses={200: RuleOut, 404: OpenApiResponse(ErrorSerializer), **_ERRORS},
        tags=["hitl"],
    )
    async def put(self, request: Request, rule_id: int) -> Response:
        """Fields left out take their defaults."""
        rule = await off_shared_thread(rule_update)(rule_id=rule_id, data=_body(request), user=request.user)
        return Response(rule_as_dict(rule))

    @extend_schema(
        operation_id="hitl_rules_destroy",
        summary="Delete an approval rule",
        responses={204: None, 404: OpenApiResponse(ErrorSerializer), **_ERRORS},
        tags=["hitl"],
    )
    async def delete(self, request: Request, rule_id: int) -> Response:
        await off_shared_thread(rule_delete)(rule_id=rule_id, user=request.user)
        return Response(status=204)


class ApprovalRulesEvaluateView(AsyncAPIView):
    """Dry run: what the rules would do with a request body. Creates nothing."""

    permission_classes = [IsAuthenticated, CanChangeRules]
    parser_classes = [StrictJSONParser]

    @extend_schema(
        operation_id="hitl_rules_evaluate",
        summary="What the approval policy would do with a request (dry run)",
        request=PolicyProbeIn,
        responses={200: PolicyOutcomeOut, **_ERRORS},
        tags=["hitl"],
    )
    async def post(self, request: Request) -> Response:
        data = validated(PolicyProbeIn, _body(request))
        return Response(await off_shared_thread(policy_dry_run)(data=data))
