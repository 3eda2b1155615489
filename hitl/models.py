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

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "expires_at"], name="approval_status_expiry"),
            models.Index(fields=["status", "-created_at"], name="approval_status_created"),
            models.Index(fields=["session_id", "-created_at"], name="approval_session"),
            models.Index(fields=["tool_name", "-created_at"], name="approval_tool"),
            models.Index(fields=["agent", "-created_at"], name="approval_agent"),
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
