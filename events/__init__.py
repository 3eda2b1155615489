"""The events app: event types, the bus and its transports, the store, the live feed, the ingest API.

Importing any module of the app runs this first: the typed event classes register themselves with
`BaseEvent.registry` as they are defined, so `BaseEvent.from_dict` builds them even where only
`events.base` was imported (events.base itself imports none of them: they import it).
"""

from . import agent_events, session_events, system_events, tool_events  # noqa: F401
