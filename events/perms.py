"""The events app's permissions, named once."""

PUBLISH_EVENTS = "events.publish_events"  # agents: POST /api/events/, POST /v1/traces
VIEW_EVENTS = "events.view_storedevent"  # auditors and operators: read events, the live feed, metrics
