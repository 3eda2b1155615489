"""The durable event store: every event with its global position, the writers' counter, purge permits."""

from __future__ import annotations

from typing import Any

from django.db import models


class StoredEvent(models.Model):
    """One event as published, numbered by `position`: strictly increasing in commit order."""

    position = models.BigIntegerField(primary_key=True)
    event_id = models.UUIDField(unique=True)
    event_type = models.CharField(max_length=100)
    event_category = models.CharField(max_length=16)
    timestamp = models.DateTimeField()
    session_id = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001 - the contract distinguishes null from ""
    correlation_id = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001 - the contract distinguishes null from ""
    causation_id = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001 - the contract distinguishes null from ""
    data = models.JSONField(default=dict)
    source = models.CharField(max_length=255)
    version = models.CharField(max_length=16)
    # Who acted, where a person (or an agent's token) did: set by the server, never by a payload.
    actor = models.CharField(max_length=150, null=True, blank=True)  # noqa: DJ001 - the contract distinguishes null from ""
    stored_at = models.DateTimeField()

    class Meta:
        ordering = ["position"]
        indexes = [
            models.Index(fields=["session_id", "position"], name="event_session_pos"),
            models.Index(fields=["correlation_id", "position"], name="event_correlation_pos"),
            models.Index(fields=["event_type", "timestamp"], name="event_type_time"),
            models.Index(fields=["event_category", "timestamp"], name="event_category_time"),
            models.Index(fields=["timestamp"], name="event_time"),
            # The admin's filters, newest first (position descending reads these backwards).
            models.Index(fields=["event_category", "position"], name="event_category_pos"),
            models.Index(fields=["event_type", "position"], name="event_type_pos"),
            models.Index(fields=["source", "position"], name="event_source_pos"),
        ]
        permissions = [("publish_events", "Can publish events through the API")]

    def __str__(self) -> str:
        return f"#{self.position} {self.event_type}"

    def as_contract_dict(self) -> dict[str, Any]:
        """The contract's JSON object of a stored event (the event plus its `position`)."""
        return row_to_contract_dict(self.__dict__)


def row_to_contract_dict(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row (model __dict__ or a values() dict) as the contract's JSON object."""
    from .base import format_timestamp

    return {
        "event_id": str(row["event_id"]),
        "event_type": row["event_type"],
        "event_category": row["event_category"],
        "timestamp": format_timestamp(row["timestamp"]),
        "session_id": row["session_id"],
        "correlation_id": row["correlation_id"],
        "causation_id": row["causation_id"],
        "data": row["data"],
        "source": row["source"],
        "version": row["version"],
        "position": row["position"],
    }


class PositionCounter(models.Model):
    """The one row whose lock orders every writer: positions are handed out under it, then committed."""

    value = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"position {self.value}"


class PurgePermit(models.Model):
    """While a row exists in the purging transaction, the append-only triggers allow DELETE."""

    granted_at = models.DateTimeField(auto_now_add=True)
    reason = models.CharField(max_length=255)
    # Ed25519 over the purge's statement, made with AUDIT_SIGNING_KEY_FILE (audit.signing); the purge
    # checkpoint records it, and verification refuses a checkpoint without a valid one.
    signature = models.TextField(blank=True, default="", db_default="")

    def __str__(self) -> str:
        return self.reason
