"""Output serializers of the audit API (for the schema; the views return plain dicts)."""

from rest_framework import serializers


class VerifyResultSerializer(serializers.Serializer):
    """The outcome of checking the hash chain."""

    ok = serializers.BooleanField()
    entries = serializers.IntegerField(help_text="Entries checked (all of them when ok).")
    broken_entry = serializers.IntegerField(required=False, help_text="The id of the first entry that fails.")
    reason = serializers.CharField(required=False)
    witnessed_heads = serializers.IntegerField(
        required=False, help_text="Signed heads of AUDIT_WITNESS_FILE found in the chain (when it is set)."
    )
    signatures_checked = serializers.BooleanField(
        required=False, help_text="True when a signing key is set: heads and purges were checked with it."
    )


class AuditEntryOutSerializer(serializers.Serializer):
    """An entry of the audit trail: the event's fields, who acted, and its place in the hash chain."""

    entry_id = serializers.IntegerField(help_text="The entry's number in the chain.")
    kind = serializers.ChoiceField(choices=["event", "checkpoint"], help_text="`checkpoint`: a purge record.")
    position = serializers.IntegerField(
        allow_null=True, help_text="The event's position; null for a checkpoint."
    )
    event_id = serializers.UUIDField(allow_null=True)
    event_type = serializers.CharField()
    event_category = serializers.CharField()
    timestamp = serializers.DateTimeField()
    session_id = serializers.CharField(allow_null=True)
    correlation_id = serializers.CharField(allow_null=True)
    actor = serializers.CharField(allow_null=True, help_text="Who acted: the authenticated user, if any.")
    data = serializers.DictField()  # type: ignore[assignment]  # the entry's name shadows Serializer.data
    source = serializers.CharField()  # type: ignore[assignment]
    hash = serializers.CharField(help_text="SHA-256 of the previous entry's hash and this entry's content.")


class AuditEntryPageSerializer(serializers.Serializer):
    """A page of the audit trail in chain order, with the links to the pages beside it."""

    next = serializers.URLField(allow_null=True, help_text="The next page; null on the last one.")
    previous = serializers.URLField(allow_null=True, help_text="The previous page; null on the first one.")
    results = AuditEntryOutSerializer(many=True)
