"""Notifications: webhook endpoints with their durable outbox and attempts, expiry warnings already
published, e-mails waiting for a digest, operators' preferences."""

from __future__ import annotations

import base64
import secrets

from django.conf import settings
from django.db import models
from django.db.models import Q


def webhook_secret_generate() -> str:
    """A new Standard Webhooks secret: `whsec_` and the base64 of 32 random bytes.

    The standardwebhooks library has no generator; it is the one that checks the value (see
    notify.webhooks.check_secret), so a secret it cannot use is never saved.
    """
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class WebhookEndpoint(models.Model):
    """A receiver of stored events: each matching event is POSTed, signed, in position order."""

    url = models.URLField(max_length=2000, help_text="https:// only (unless WEBHOOK_ALLOW_HTTP).")
    description = models.CharField(max_length=255, blank=True)
    event_types = models.JSONField(
        default=list,
        blank=True,
        help_text="Event types or categories (agent, session, tool, hitl, system, metrics); empty: all "
        "events.",
    )
    secret = models.CharField(max_length=200, default=webhook_secret_generate)
    enabled = models.BooleanField(default=True)
    disabled_reason = models.TextField(blank=True)
    queued_position = models.BigIntegerField(
        default=0,
        editable=False,
        help_text="The store's events up to this position are in this endpoint's outbox (or were skipped "
        "while it was disabled).",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.url


class WebhookDelivery(models.Model):
    """One stored event for one endpoint: the outbox row, queued by the endpoint's worker from the store
    (notify.services.webhook_enqueue), and its outcome."""

    # No database constraint: the rows of an endpoint deleted while its worker queues are left behind
    # harmlessly (the cascade in Django removes the rest).
    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries", db_constraint=False
    )
    position = models.BigIntegerField(help_text="The stored event's position.")
    event_id = models.CharField(max_length=36)
    event_type = models.CharField(max_length=100)
    created_at = models.DateTimeField()
    delivered_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0, db_default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    first_failed_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="", db_default="")

    class Meta:
        ordering = ["-position"]
        # One index: the worker queues each stored position once per endpoint (the endpoint's
        # queued_position moves in the same transaction), so (endpoint, position) is unique without a
        # constraint checking it.
        indexes = [
            # The worker's page: an endpoint's undelivered rows in position order.
            models.Index(
                fields=["endpoint", "position"],
                condition=Q(delivered_at__isnull=True),
                name="webhook_delivery_pending",
            ),
        ]
        verbose_name_plural = "webhook deliveries"

    def __str__(self) -> str:
        return f"#{self.position} {self.event_type} → {self.endpoint_id}"


class WebhookAttempt(models.Model):
    """One HTTP attempt of a delivery: what the receiver answered, and how fast."""

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_rows")
    attempted_at = models.DateTimeField()
    status_code = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.FloatField()
    succeeded = models.BooleanField()
    error = models.TextField(blank=True)
    response_excerpt = models.TextField(blank=True, help_text="The first 1 KB of the response body.")

    class Meta:
        ordering = ["-attempted_at", "-id"]

    def __str__(self) -> str:
        return f"{self.status_code or self.error[:40]} in {self.latency_ms:.0f} ms"


class WorkerLease(models.Model):
    """Which server process works on a queue (one webhook endpoint, the e-mails, Slack) until when."""

    name = models.CharField(max_length=100, unique=True)
    owner = models.CharField(max_length=100)
    expires_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.name}: {self.owner}"


class NotifyCursor(models.Model):
    """How far in the store a notifier (e-mail, Slack) has read."""

    name = models.CharField(max_length=100, unique=True)
    position = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name} @ {self.position}"


class ExpiryWarning(models.Model):
    """A request whose `tool_approval_expiring` event has been published (once per request)."""

    call_id = models.CharField(max_length=255, unique=True)
    warned_at = models.DateTimeField()
    expires_at = models.DateTimeField()

    def __str__(self) -> str:
        return self.call_id


class PendingEmail(models.Model):
    """A notice for one person waiting for their next digest (NOTIFY_EMAIL_DIGEST_S)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    call_id = models.CharField(max_length=255)
    kind = models.CharField(max_length=20)  # "new" or "escalated"
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.kind} {self.call_id} for {self.user_id}"


class NotificationPreference(models.Model):
    """An operator's choice of channels and tools; without a row: every channel, every tool."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notification_preference"
    )
    email = models.BooleanField(default=True, help_text="E-mail me about requests I may decide.")
    slack = models.BooleanField(default=True, help_text="Mention me in Slack (when my e-mail matches).")
    tools = models.JSONField(
        default=list, blank=True, help_text="Tool names or globs (fnmatch) to hear about; empty: all tools."
    )

    def __str__(self) -> str:
        return f"preferences of {self.user_id}"


class SlackMessage(models.Model):
    """The Slack message of a request (channel id and ts), so later changes update it in place."""

    call_id = models.CharField(max_length=255, unique=True)
    channel = models.CharField(max_length=100)
    ts = models.CharField(max_length=50)
    posted_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.call_id} in {self.channel} at {self.ts}"
