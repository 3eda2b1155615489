"""The append-only audit trail (a hash chain) and the durable metric counters."""

from django.db import models

GENESIS_HASH = "0" * 64


class AuditEntry(models.Model):
    """A critical event, or a purge checkpoint, chained to the entry before it by its hash."""

    class Kind(models.TextChoices):
        EVENT = "event", "event"
        CHECKPOINT = "checkpoint", "purge checkpoint"

    id = models.BigAutoField(primary_key=True)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.EVENT)
    position = models.BigIntegerField(null=True, blank=True, help_text="The event's position in the store.")
    event_id = models.UUIDField(null=True, blank=True)
    event_type = models.CharField(max_length=100)
    event_category = models.CharField(max_length=16)
    timestamp = models.DateTimeField()
    session_id = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001 - the contract distinguishes null from ""
    correlation_id = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001 - the contract distinguishes null from ""
    actor = models.CharField(max_length=150, null=True, blank=True)  # noqa: DJ001 - the contract distinguishes null from ""
    data = models.JSONField(default=dict)
    source = models.CharField(max_length=255, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ["id"]
        verbose_name = "audit entry"
        verbose_name_plural = "audit trail"
        indexes = [
            models.Index(fields=["session_id", "id"], name="audit_session_id"),
            models.Index(fields=["event_type", "id"], name="audit_type_id"),
            models.Index(fields=["actor", "id"], name="audit_actor_id"),
            models.Index(fields=["timestamp"], name="audit_time"),
            models.Index(fields=["kind", "id"], name="audit_kind_id"),
            models.Index(fields=["correlation_id", "id"], name="audit_correlation_id"),
            models.Index(fields=["event_id"], name="audit_event_id"),
        ]
        permissions = [
            ("export_audit", "Can export the audit trail and events"),
            ("verify_audit", "Can verify the audit chain"),
        ]

    def __str__(self) -> str:
        return f"#{self.id} {self.event_type}"


class MetricCounter(models.Model):
    """One number of the design document's metrics, kept up to date by the store's writer."""

    metric = models.CharField(max_length=32)
    key = models.CharField(max_length=255)
    field = models.CharField(max_length=64)
    value = models.FloatField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["metric", "key", "field"], name="metric_counter_unique")
        ]

    def __str__(self) -> str:
        return f"{self.metric}[{self.key}].{self.field} = {self.value}"


class ChainHead(models.Model):
    """One row (id 1): the chain's newest entry and how many entries the chain has ever had (purged ones
    included), kept by the writer in the transaction that appends. A convenience for signing heads
    cheaply; verification never trusts it (it checks witnessed, signed heads against the entries)."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    entry_id = models.BigIntegerField(null=True, blank=True)
    hash = models.CharField(max_length=64, default=GENESIS_HASH)
    count = models.BigIntegerField(default=0)

    class Meta:
        verbose_name = "audit chain head"

    def __str__(self) -> str:
        return f"#{self.entry_id} ({self.count} entries)"


class KeyRotation(models.Model):
    """A statement that the audit signing key changed, signed by the new key and by the old one."""

    created_at = models.DateTimeField(auto_now_add=True)
    old_key_id = models.CharField(max_length=64, db_index=True)
    new_key_id = models.CharField(max_length=64, db_index=True)
    record = models.JSONField(help_text="{statement, new_signature, old_signature} (docs/auditors.md).")

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.old_key_id[:12]} -> {self.new_key_id[:12]}"
