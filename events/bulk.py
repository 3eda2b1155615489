"""Bulk inserts for the store's writer and its hooks: COPY on PostgreSQL, executemany on SQLite."""

import json
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any

from django.db import connection
from django.db.backends.utils import CursorWrapper


def bulk_insert(
    cursor: CursorWrapper, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> int:
    """Insert `rows` (values already adapted for this database) into `table` in one go; how many.

    On PostgreSQL `rows` may be a generator, and should be for a large batch: COPY sends each chunk as
    it fills, so the server inserts the first rows while the rest are still being built (a list built
    first leaves the server idle meanwhile, as long as building takes)."""
    if isinstance(rows, Sequence) and not rows:
        return 0
    names = ", ".join(columns)
    if connection.vendor == "postgresql":
        # COPY is several times faster than INSERT; it runs on psycopg's own cursor, so its errors
        # arrive as psycopg's, not Django's.
        count = 0
        with cursor.cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
            write_row = copy.write_row
            for row in rows:
                write_row(row)
                count += 1
        return count
    rows = rows if isinstance(rows, list) else list(rows)
    if not rows:
        return 0
    marks = ", ".join(["%s"] * len(columns))
    cursor.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)
    return len(rows)


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


def text_encoder(**options: Any) -> Callable[[Any], str]:
    """json.dumps(value, ensure_ascii=False, **options) as one function, the same text.

    json.dumps with any non-default option builds a JSONEncoder and its C encoder on every call: 4.6 us
    of a store row's 5 us of JSON (a small `data`, measured). The C encoder built once writes the same
    text in 1.3 us. Without circular-reference markers: the bus has checked the value (ensure_json_safe),
    and a cycle would still end in RecursionError, not a wrong text.
    """
    encoder = json.JSONEncoder(ensure_ascii=False, **options)
    if c_make_encoder is None:  # CPython without its _json accelerator
        return encoder.encode
    make = c_make_encoder(
        None,
        encoder.default,
        encode_basestring,
        None,
        encoder.key_separator,
        encoder.item_separator,
        encoder.sort_keys,
        encoder.skipkeys,
        encoder.allow_nan,
    )

    def text(value: Any) -> str:
        if type(value) is str:
            return encode_basestring(value)  # the C encoder yields no chunks for a bare string
        return "".join(make(value, 0))

    return text


# `data` as the store writes it: json.dumps(data, ensure_ascii=False).
json_text = text_encoder()
