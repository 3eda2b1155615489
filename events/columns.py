"""The columns of the store's table, in the order the writer inserts them.

A module of its own so that the writer (events.store_writer) and the readers (events.selectors) share
it without importing each other, and without the models (the writer's module loads before the apps).
"""

EVENT_COLUMNS = (
    "position",
    "event_id",
    "event_type",
    "event_category",
    "timestamp",
    "session_id",
    "correlation_id",
    "causation_id",
    "data",
    "source",
    "version",
    "actor",
    "stored_at",
)
