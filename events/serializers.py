"""Input and output serializers of the events API.

The input serializer describes an event for the OpenAPI schema; the view validates events with
BaseEvent.from_dict, the one validation every surface (REST, WebSocket, Redis) shares, so the typed
events' rules (`confidence` is high, medium or low...) apply and errors name the field the same way.
"""

from __future__ import annotations

from rest_framework import serializers

from .event_types import EventCategory


class EventInSerializer(serializers.Serializer):
    """An event as the contract's JSON; `event_id` and `timestamp` are filled in when missing."""

    event_id = serializers.UUIDField(required=False, help_text="Generated when missing. Idempotency key.")
    event_type = serializers.CharField(max_length=100)
    event_category = serializers.ChoiceField(
        choices=[c.value for c in EventCategory], required=False, help_text="Implied by a known event_type."
    )
    timestamp = serializers.DateTimeField(required=False, help_text="ISO 8601; now when missing.")
    session_id = serializers.CharField(max_length=255, required=False, allow_null=True)
    correlation_id = serializers.CharField(max_length=255, required=False, allow_null=True)
    causation_id = serializers.CharField(max_length=255, required=False, allow_null=True)
    data = serializers.DictField(  # type: ignore[assignment]  # the contract's name shadows Serializer.data
        required=False, help_text="The typed event's fields."
    )
    source = serializers.CharField(max_length=255, required=False)  # type: ignore[assignment]
    version = serializers.CharField(max_length=16, required=False)


class IngestResultSerializer(serializers.Serializer):
    """The stored positions and event ids, in the order the events were sent."""

    positions = serializers.ListField(child=serializers.IntegerField(allow_null=True))
    event_ids = serializers.ListField(child=serializers.UUIDField())
    position = serializers.IntegerField(
        required=False, allow_null=True, help_text="Only when the body was a single event object."
    )


class ErrorItemSerializer(serializers.Serializer):
    index = serializers.IntegerField(required=False, help_text="The event's index in the list.")
    field = serializers.CharField(required=False, allow_null=True)
    message = serializers.CharField()
    code = serializers.CharField(required=False)


class ErrorSerializer(serializers.Serializer):
    """Every API error: a message and a stable code; validation errors list their details."""

    detail = serializers.CharField()
    code = serializers.CharField()
    errors = ErrorItemSerializer(many=True, required=False)  # type: ignore[assignment]


class StoredEventOutSerializer(serializers.Serializer):
    """A stored event as the contract's JSON: the event and its `position` (the views return dicts)."""

    event_id = serializers.UUIDField()
    event_type = serializers.CharField()
    event_category = serializers.ChoiceField(choices=[c.value for c in EventCategory])
    timestamp = serializers.DateTimeField(help_text="ISO 8601 in UTC, ending in `Z`.")
    session_id = serializers.CharField(allow_null=True)
    correlation_id = serializers.CharField(allow_null=True)
    causation_id = serializers.CharField(allow_null=True)
    data = serializers.DictField()  # type: ignore[assignment]  # the contract's name shadows Serializer.data
    source = serializers.CharField()  # type: ignore[assignment]
    version = serializers.CharField()
    position = serializers.IntegerField(help_text="Strictly increasing in commit order across the store.")


class StoredEventPageSerializer(serializers.Serializer):
    """A page of stored events in position order, with the links to the pages beside it."""

    next = serializers.URLField(allow_null=True, help_text="The next page; null on the last one.")
    previous = serializers.URLField(allow_null=True, help_text="The previous page; null on the first one.")
    results = StoredEventOutSerializer(many=True)
