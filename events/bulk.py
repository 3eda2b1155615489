"""Bulk inserts for the store's writer and its hooks: COPY on PostgreSQL, executemany on SQLite."""

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from django.db import connection
from django.db.backends.utils import CursorWrapper


def bulk_insert(
    cursor: CursorWrapper, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """Insert `rows` (values already adapted for this database) into `table` in one go."""
    if not rows:
        return
    names = ", ".join(columns)
    if connection.vendor == "postgresql":
        # COPY is several times faster than INSERT; it runs on psycopg's own cursor, so its errors
        # arrive as psycopg's, not Django's.
        with cursor.cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    marks = ", ".join(["%s"] * len(columns))
    cursor.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)


def datetime_adapter() -> Callable[[datetime], Any]:
    """A function giving this database's value for an aware datetime, as Django would store it."""
    if connection.vendor == "postgresql":
        return _same
    if connection.timezone_name == "UTC":
        # Django's own adapter for SQLite, without its per-call settings and zone look-ups.
        return _sqlite_utc_text
    return connection.ops.adapt_datetimefield_value


def _same(value: datetime) -> datetime:
    return value


def _sqlite_utc_text(value: datetime) -> str:
    return str(value.astimezone(UTC).replace(tzinfo=None))
