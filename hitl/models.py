"""Approval requests: a tool call held until a person approves, edits or rejects it."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class ApprovalStatus(models.TextChoices):
    PENDING = "pending", "pending"
    APPROVED = "approved", "approved"
    EDITED = "edited", "approved with edits"
    REJECTED = "rejected", "rejected"
    EXPIRED = "expired", "expired"
    CANCELLED = "cancelled", "cancelled"


class DecisionChannel(models.TextChoices):
    ADMIN = "admin", "admin"
    PAGE = "page", "approval page"
    API = "api", "API"
    WEBSOCKET = "websocket", "WebSocket"
    EXPIRY = "expiry", "expiry"
    POLICY = "policy", "approval policy"
    SLACK = "slack", "Slack"


class OnExpire(models.TextChoices):
    REJECT = "reject", "reject"
    APPROVE = "approve", "approve"


class ApprovalRequest(models.Model):
    """One held tool call, keyed by the agent's `call_id`."""

    call_id = models.CharField(max_length=255, unique=True)
    session_id = models.CharField(max_length=255)
    correlation_id = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001 - null: none given
    agent = models.CharField(max_length=150, blank=True)
    tool_name = models.CharField(max_length=255)
    arguments = models.JSONField(help_text="The arguments as the agent proposed them.")
    modified_args = models.JSONField(null=True, blank=True, help_text="The arguments after an edit.")
    args_hash = models.CharField(max_length=64, help_text="SHA-256 of the tool name and canonical arguments.")
    reason = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=ApprovalStatus.choices, default=ApprovalStatus.PENDING)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_by_username = models.CharField(max_length=150, blank=True)
    channel = models.CharField(max_length=16, choices=DecisionChannel.choices, blank=True)
    comment = models.TextField(blank=True)
    created_at = models.DateTimeField()
    decided_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField()
    on_expire = models.CharField(max_length=8, choices=OnExpire.choices, default=OnExpire.REJECT)
    # What the approval policy (hitl.policies) said when the request was made.
    rule = models.CharField(
        max_length=255,
        blank=True,
        help_text='The rule that decided or routed it: "<name>@<version>", "standing:<id>", or empty '
        "(no rule matched: one approval by any operator).",
    )
    args_sha256 = models.CharField(
        max_length=64, blank=True, help_text="SHA-256 of the arguments' RFC 8785 canonical JSON."
    )
    approvals_required = models.PositiveIntegerField(default=1)
    approvals = models.JSONField(default=list, blank=True, help_text='[{"user", "decided_at"}], in order.')
    approver_group = models.CharField(max_length=150, null=True, blank=True)  # noqa: DJ001 - null: any operator
    escalate_to_group = models.CharField(max_length=150, null=True, blank=True)  # noqa: DJ001 - null: none
    escalate_at = models.DateTimeField(null=True, blank=True)
    escalated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "expires_at"], name="approval_status_expiry"),
            models.Index(fields=["status", "-created_at"], name="approval_status_created"),
            models.Index(fields=["session_id", "-created_at"], name="approval_session"),
            models.Index(fields=["tool_name", "-created_at"], name="approval_tool"),
            models.Index(fields=["agent", "-created_at"], name="approval_agent"),
            models.Index(fields=["rule", "-created_at"], name="approval_rule"),
            models.Index(fields=["status", "escalate_at"], name="approval_status_escalate"),
        ]
        permissions = [
            ("decide_approvalrequest", "Can approve, edit or reject approval requests"),
            ("request_approval", "Can ask for approval of a tool call (agents)"),
        ]

    def __str__(self) -> str:
        return f"{self.tool_name} ({self.call_id}): {self.status}"

    @property
    def is_pending(self) -> bool:
        return self.status == ApprovalStatus.PENDING


class RuleAction(models.TextChoices):
    APPROVE = "approve", "approve at once"
    REJECT = "reject", "reject at once"
    REQUIRE = "require", "require people's approval"


class ApprovalRule(models.Model):
    """One rule of the approval policy; written only through hitl.policies (each change is audited)."""

    name = models.CharField(max_length=150, unique=True)
    priority = models.IntegerField(default=0, help_text="Higher first; equal priorities by id.")
    enabled = models.BooleanField(default=True)
    tool = models.CharField(max_length=255, default="*", help_text="A glob of tool names (fnmatch).")
    agent = models.CharField(max_length=255, default="*", help_text="A glob of agent names (fnmatch).")
    condition = models.TextField(
        blank=True,
        help_text="A CEL expression over tool_name, arguments, agent, session_id, reason; empty: true.",
    )
    action = models.CharField(max_length=8, choices=RuleAction.choices, default=RuleAction.REQUIRE)
    approvals_required = models.PositiveIntegerField(default=1)
    approver_group = models.CharField(max_length=150, null=True, blank=True)  # noqa: DJ001 - null: any operator
    escalate_after_s = models.FloatField(null=True, blank=True)
    escalate_to_group = models.CharField(max_length=150, null=True, blank=True)  # noqa: DJ001 - null: none
    message = models.TextField(blank=True, help_text="Told to the agent when the rule rejects.")
    version = models.PositiveIntegerField(default=1, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-priority", "id"]
        indexes = [models.Index(fields=["enabled", "-priority", "id"], name="approval_rule_order")]

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"


class StandingScope(models.TextChoices):
    SESSION = "session", "this session"
    AGENT = "agent", "this agent"


class StandingApproval(models.Model):
    """An operator's "approve this again": the same tool with the same arguments, in one session or for
    one agent (of the same requesting account), approved automatically until `expires_at`."""

    scope = models.CharField(max_length=8, choices=StandingScope.choices)
    scope_value = models.CharField(max_length=255, help_text="The session_id or the agent name.")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="+",
        help_text="The requesting account it applies to (an agent's token), so another account naming "
        "the same session or agent gets nothing from it.",
    )
    tool_name = models.CharField(max_length=255)
    args_sha256 = models.CharField(max_length=64)
    source_call_id = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_by_username = models.CharField(max_length=150, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by_username = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["tool_name", "args_sha256", "expires_at"], name="standing_lookup")]

    def __str__(self) -> str:
        return f"standing:{self.pk} {self.tool_name} ({self.scope} {self.scope_value})"

    @property
    def label(self) -> str:
        return f"standing:{self.pk}"
