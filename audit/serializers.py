"""Output serializers of the audit API (for the schema; the views return plain dicts)."""

from rest_framework import serializers


class VerifyResultSerializer(serializers.Serializer):
    """The outcome of checking the hash chain."""

    ok = serializers.BooleanField()
    entries = serializers.IntegerField(help_text="Entries checked (all of them when ok).")
    broken_entry = serializers.IntegerField(required=False, help_text="The id of the first entry that fails.")
    reason = serializers.CharField(required=False)
