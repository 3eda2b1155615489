"""Exports of stored events as CSV, NDJSON or one JSON array, streamed in constant memory.

`GET /api/audit/export/` and `manage.py export_audit` both run an `EventExport`: the filters of
`/api/events/` (events.filters), then keyset iteration by position, one page at a time
(`WHERE <filters> AND position > <last read> ORDER BY position LIMIT 10000`): no OFFSET, no query
holding the whole result, nothing kept between pages but the last position. Pages are read in a worker
thread (a connection of its own, closed after each page) and encoded in another, a thousand rows at a
time, so the event loop only passes bytes on; the view's response is fed by an async iterator that holds
no thread while the client reads, and reads the next page while the current one is encoded and sent.

Every row is the contract's JSON of a stored event with its `position`, with the values
`events.models.row_to_contract_dict` gives. CSV: a header of those keys, `data` as compact JSON, every
value quoted except nulls, which are empty and unquoted (PostgreSQL's COPY convention, and what Python
3.12's `csv.QUOTE_NOTNULL` reads back as None), so a null and an empty string stay apart; lines end in
`\\n`. NDJSON: one compact object per line. JSON: one array, an object per line.

On PostgreSQL the database writes each row's text around `data` (ids, timestamps, CSV quoting or JSON
escaping) and Python only makes the jsonb text of `data` compact, a thousand rows per handful of str
operations: formatting every value in Python costs several times more than reading it (about 20 against
3 us a row, measured), and the export must keep up with COPY. Elsewhere (SQLite) rows are formatted in
Python. Both write the same bytes (tests/audit/test_audit_api_export.py checks it on PostgreSQL).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.db import connection
from django.db.models import OuterRef, QuerySet, Subquery
from django.db.models.expressions import RawSQL

from core.async_views import off_shared_thread
from events.base import format_timestamp
from events.filters import StoredEventFilter, filtered, parameter_error, validated_filters
from events.models import StoredEvent
from events.selectors import CONTRACT_FIELDS

from .models import AuditEntry

# Rows read per page: the export's memory grows with it (a million rows, PostgreSQL, benchmarks/export.py:
# 5,000 peaked at 132.6-134.7 MB, 2,000 at 124.5-126.1 MB; the goal is under 130), its rate barely does.
EXPORT_PAGE_SIZE = 2_000
ENCODE_SLICE = 1_000
# The keys of each row, in the contract's order: the event's, then `position`.
COLUMNS = CONTRACT_FIELDS
# With audit_only, each row is an audit entry: the same keys (`causation_id` and `version` from the
# stored event, null once it is purged and for purge checkpoints), then its place in the chain.
AUDIT_COLUMNS = (*COLUMNS, "entry_id", "kind", "actor", "prev_hash", "hash")

Row = tuple[Any, ...]  # a values_list row: COLUMNS, or (on PostgreSQL) head, data, tail and position


# Formatting in Python (any database)

# Stands for a null in the csv writer's input: the store refuses NUL in text, so no value contains one.
_NULL = "\x00"
_QUOTED_NULL = f'"{_NULL}"'
_compact_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def _event_dicts(rows: Sequence[Row]) -> list[dict[str, Any]]:
    # events.models.row_to_contract_dict, for tuples, inlined: this runs once per exported row.
    fmt = format_timestamp
    return [
        {
            "event_id": str(event_id),
            "event_type": event_type,
            "event_category": event_category,
            "timestamp": fmt(timestamp),
            "session_id": session_id,
            "correlation_id": correlation_id,
            "causation_id": causation_id,
            "data": data,
            "source": source,
            "version": version,
            "position": position,
        }
        for (
            event_id,
            event_type,
            event_category,
            timestamp,
            session_id,
            correlation_id,
            causation_id,
            data,
            source,
            version,
            position,
        ) in rows
    ]


def _csv_text(rows: Iterator[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(rows)
    return buffer.getvalue().replace(_QUOTED_NULL, "")


def _csv_page(rows: Sequence[Row], first: bool) -> str:
    fmt = format_timestamp
    dumps = _compact_json
    null = _NULL
    return _csv_text(
        (
            str(event_id),
            event_type,
            event_category,
            fmt(timestamp),
            null if session_id is None else session_id,
            null if correlation_id is None else correlation_id,
            null if causation_id is None else causation_id,
            dumps(data),
            source,
            version,
            position,
        )
        for (
            event_id,
            event_type,
            event_category,
            timestamp,
            session_id,
            correlation_id,
            causation_id,
            data,
            source,
            version,
            position,
        ) in rows
    )


# An audit entry row, as read: AUDIT_COLUMNS, but `position` last (where encode() looks for it).
_AUDIT_READ = (*COLUMNS[:-1], "id", "kind", "actor", "prev_hash", "hash", "position")


def _audit_dicts(rows: Sequence[Row]) -> list[dict[str, Any]]:
    fmt = format_timestamp
    return [
        {
            "event_id": None if event_id is None else str(event_id),
            "event_type": event_type,
            "event_category": event_category,
            "timestamp": fmt(timestamp),
            "session_id": session_id,
            "correlation_id": correlation_id,
            "causation_id": causation_id,
            "data": data,
            "source": source,
            "version": version,
            "position": position,
            "entry_id": entry_id,
            "kind": kind,
            "actor": actor,
            "prev_hash": prev_hash,
            "hash": hash_,
        }
        for (
            event_id,
            event_type,
            event_category,
            timestamp,
            session_id,
            correlation_id,
            causation_id,
            data,
            source,
            version,
            entry_id,
            kind,
            actor,
            prev_hash,
            hash_,
            position,
        ) in rows
    ]


def _audit_csv_page(rows: Sequence[Row], first: bool) -> str:
    dumps = _compact_json
    null = _NULL
    return _csv_text(
        [null if value is None else (dumps(value) if key == "data" else value) for key, value in row.items()]
        for row in _audit_dicts(rows)
    )


def _audit_ndjson_page(rows: Sequence[Row], first: bool) -> str:
    return _line_safe("".join([_compact_json(entry) + "\n" for entry in _audit_dicts(rows)]))


def _audit_json_page(rows: Sequence[Row], first: bool) -> str:
    text = ",\n".join([_compact_json(entry) for entry in _audit_dicts(rows)])
    return ("\n" if first else ",\n") + _line_safe(text)


_AUDIT_ENCODERS: dict[str, Callable[[Sequence[Row], bool], str]] = {
    "csv": _audit_csv_page,
    "ndjson": _audit_ndjson_page,
    "json": _audit_json_page,
}


def _line_safe(text: str) -> str:
    # U+2028 and U+2029 are valid raw in JSON strings, but str.splitlines() and other readers take them
    # for line breaks: escaped (they can only be inside strings), one object stays on one line.
    if "\u2028" in text or "\u2029" in text:
        return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return text


def _ndjson_page(rows: Sequence[Row], first: bool) -> str:
    return _line_safe("".join([_compact_json(event) + "\n" for event in _event_dicts(rows)]))


def _json_page(rows: Sequence[Row], first: bool) -> str:
    text = ",\n".join([_compact_json(event) for event in _event_dicts(rows)])
    return ("\n" if first else ",\n") + _line_safe(text)


# Formatting in PostgreSQL (columns unqualified: the export reads events_storedevent alone, filtered on
# its own columns)


def _sql_csv(column: str, *, nullable: bool = False) -> str:
    """A text column as a CSV value: quoted, quotes doubled; NULL as nothing (never a NULL line)."""
    quoted = f"""'"' || replace({column}, '"', '""') || '"'"""
    return f"COALESCE({quoted}, '')" if nullable else quoted


def _sql_json(column: str, *, nullable: bool = False) -> str:
    """A text column as a JSON string, escaped as the json module escapes it; NULL as null."""
    return f"COALESCE(to_json({column})::text, 'null')" if nullable else f"to_json({column})::text"


# format_timestamp's text: ISO 8601 in UTC with a Z, microseconds only when there are some.
_SQL_TIMESTAMP = """CASE WHEN to_char("timestamp" AT TIME ZONE 'UTC', 'US') = '000000'
    THEN to_char("timestamp" AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
    ELSE to_char("timestamp" AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') END"""
# A CSV line but `data`: what comes before its value (with the opening quote) and after it. The UUID
# and the timestamp have no quotes to double.
_SQL_CSV_HEAD = " || ',' || ".join(
    [
        """'"' || "event_id"::text || '"'""",
        _sql_csv('"event_type"'),
        _sql_csv('"event_category"'),
        f"""'"' || {_SQL_TIMESTAMP} || '"'""",
        _sql_csv('"session_id"', nullable=True),
        _sql_csv('"correlation_id"', nullable=True),
        _sql_csv('"causation_id"', nullable=True),
        """'"'""",
    ]
)
_SQL_CSV_TAIL = " || ',' || ".join(
    ["""'"'""", _sql_csv('"source"'), _sql_csv('"version"'), """'"' || "position" || '"'"""]
)
# The contract's object but `data`, compact, likewise.
_SQL_JSON_HEAD = (
    "'{' || "
    + " || ',' || ".join(
        f"""'"{key}":' || {expression}"""
        for key, expression in [
            ("event_id", """'"' || "event_id"::text || '"'"""),
            ("event_type", _sql_json('"event_type"')),
            ("event_category", _sql_json('"event_category"')),
            ("timestamp", f"""'"' || {_SQL_TIMESTAMP} || '"'"""),
            ("session_id", _sql_json('"session_id"', nullable=True)),
            ("correlation_id", _sql_json('"correlation_id"', nullable=True)),
            ("causation_id", _sql_json('"causation_id"', nullable=True)),
        ]
    )
    + """ || ',"data":'"""
)
_SQL_JSON_TAIL = (
    f"""',"source":' || {_sql_json('"source"')} || ',"version":' || {_sql_json('"version"')}"""
    """ || ',"position":' || "position" || '}'"""
)


def _compact(text: str) -> str:
    """JSON documents as PostgreSQL writes jsonb, joined by newlines, without the spaces outside strings.

    jsonb's text has no whitespace outside strings but a space after each `:` and `,`, and escapes every
    control character inside them, so a raw newline, NUL, SOH or STX never occurs in it. With escaped
    backslashes and quotes set aside as NUL and SOH, every remaining quote opens or closes a string:
    split on quotes, the even pieces are outside.
    """
    escaped = "\\" in text
    if escaped:
        text = text.replace("\\\\", "\x00").replace('\\"', "\x01")
    pieces = text.split('"')
    # One replace over all the outside pieces at once (STX, like NUL, never occurs), not one per piece.
    pieces[::2] = "\x02".join(pieces[::2]).replace(" ", "").split("\x02")
    text = '"'.join(pieces)
    if escaped:
        text = text.replace("\x01", '\\"').replace("\x00", "\\\\")
    return text


def _pg_lines(rows: Sequence[Row], *, csv_quoted: bool) -> list[str]:
    """Each row's text: the head and tail PostgreSQL made around `data`, made compact here."""
    cells = _compact("\n".join([row[1] for row in rows]))
    if csv_quoted:
        cells = cells.replace('"', '""')
    return [
        head + cell + tail
        for (head, _data, tail, _position), cell in zip(rows, cells.split("\n"), strict=True)
    ]


def _pg_csv_page(rows: Sequence[Row], first: bool) -> str:
    return "\n".join(_pg_lines(rows, csv_quoted=True)) + "\n"


def _pg_ndjson_page(rows: Sequence[Row], first: bool) -> str:
    return _line_safe("\n".join(_pg_lines(rows, csv_quoted=False))) + "\n"


def _pg_json_page(rows: Sequence[Row], first: bool) -> str:
    return ("\n" if first else ",\n") + _line_safe(",\n".join(_pg_lines(rows, csv_quoted=False)))


@dataclass(frozen=True)
class ExportFormat:
    """How a file of one format begins, encodes a page of rows (in Python, or as PostgreSQL formatted
    them), and ends."""

    name: str
    media_type: str
    start: str
    end: str
    encode_page: Callable[[Sequence[Row], bool], str]
    pg_around_data: tuple[str, str]  # SQL of the row's text before and after `data`
    pg_encode_page: Callable[[Sequence[Row], bool], str]

    @property
    def content_type(self) -> str:
        return f"{self.media_type}; charset=utf-8"


FORMATS: dict[str, ExportFormat] = {
    "csv": ExportFormat(
        "csv",
        "text/csv",
        _csv_text(iter([COLUMNS])),
        "",
        _csv_page,
        (_SQL_CSV_HEAD, _SQL_CSV_TAIL),
        _pg_csv_page,
    ),
    "ndjson": ExportFormat(
        "ndjson",
        "application/x-ndjson",
        "",
        "",
        _ndjson_page,
        (_SQL_JSON_HEAD, _SQL_JSON_TAIL),
        _pg_ndjson_page,
    ),
    "json": ExportFormat(
        "json", "application/json", "[", "\n]\n", _json_page, (_SQL_JSON_HEAD, _SQL_JSON_TAIL), _pg_json_page
    ),
}
DEFAULT_FORMAT = "csv"
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


class EventExport:
    """One export: the stored events matching valid filters, read by keyset on position, encoded page by
    page. `chunks()` and `read_page()` query the database: in async code, read through `achunks()`."""

    def __init__(
        self,
        *,
        filterset: StoredEventFilter,
        export_format: ExportFormat,
        audit_only: bool = False,
        page_size: int | None = None,
        in_database: bool | None = None,
    ) -> None:
        self.format = export_format
        self.audit_only = audit_only
        self.page_size = page_size or EXPORT_PAGE_SIZE
        self.rows_written = 0
        self.last_position: int | None = None  # of the last row encoded: resume with after=<this>
        if in_database is None:
            in_database = connection.vendor == "postgresql"
        events = filtered(filterset, StoredEvent.objects.all())
        self._events: QuerySet[StoredEvent, Row]
        if in_database:
            head, tail = export_format.pg_around_data
            self._events = events.annotate(
                export_head=RawSQL(head, ()),
                export_data=RawSQL('"data"::text', ()),
                export_tail=RawSQL(tail, ()),
            ).values_list("export_head", "export_data", "export_tail", "position")
            self._encode_page = export_format.pg_encode_page
        else:
            self._events = events.values_list(*COLUMNS)
            self._encode_page = export_format.encode_page
        # With audit_only, the same filters select audit entries (they have the same columns; purge
        # checkpoints included, which are links of the chain), read by id and formatted in Python, each
        # with its hashes; `causation_id` and `version` come from the stored event while it is kept.
        if audit_only:
            stored = StoredEvent.objects.filter(position=OuterRef("position"))
            self._entries: QuerySet[AuditEntry, Row] = (
                filtered(filterset, AuditEntry.objects.all())
                .annotate(
                    causation_id=Subquery(stored.values("causation_id")[:1]),
                    version=Subquery(stored.values("version")[:1]),
                )
                .values_list(*_AUDIT_READ)
            )
            self._encode_page = _AUDIT_ENCODERS[export_format.name]
        self._read_up_to: int | None = None  # the keyset: the last position read
        self._last_entry = 0  # with audit_only: the last audit entry read
        self._last_hash: str | None = None  # with audit_only: the last entry's hash
        self.signed_head: dict[str, Any] | None = None  # with audit_only, once the last page is read
        self._started = False
        self._finished = False

    @property
    def filename(self) -> str:
        """The download's name: events-<UTC time>.<format>."""
        return f"events-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.{self.format.name}"

    def chunks(self) -> Iterator[bytes]:
        """The whole file, piece by piece (synchronous: for commands and sync code)."""
        while not self._finished:
            yield from self.encode(*self.read_page())

    async def achunks(self) -> AsyncGenerator[bytes, None]:
        """The whole file, each page read (in a worker thread with its own connection, never the thread
        sync views share) while the one before is encoded (in another) and sent.

        At most one page is read ahead, and no thread waits on the client.
        """
        read_page = off_shared_thread(self.read_page)
        reading: asyncio.Future[tuple[list[Row], bool]] | None = asyncio.ensure_future(read_page())
        try:
            while reading is not None:
                rows, last = await reading
                reading = None if last else asyncio.ensure_future(read_page())
                for piece in await asyncio.to_thread(self.encode, rows, last):
                    yield piece
        finally:
            if reading is not None:
                reading.cancel()  # the client went away: the page being read is dropped

    def read_page(self) -> tuple[list[Row], bool]:
        """The next rows in position order, and whether they are the last (database work)."""
        if not self.audit_only:
            events = self._events.order_by("position")
            if self._read_up_to is not None:
                events = events.filter(position__gt=self._read_up_to)
            rows = list(events[: self.page_size])
            if rows:
                self._read_up_to = rows[-1][-1]
            return rows, len(rows) < self.page_size
        rows = list(self._entries.filter(id__gt=self._last_entry).order_by("id")[: self.page_size])
        if rows:
            self._last_entry = rows[-1][_AUDIT_READ.index("id")]
            self._last_hash = rows[-1][_AUDIT_READ.index("hash")]
        last = len(rows) < self.page_size
        if last and self._last_hash is not None:
            self.signed_head = self.sign_head()
        return rows, last

    def sign_head(self) -> dict[str, Any]:
        """A head of the chain at the last exported entry, signed now (database work)."""
        from . import signing
        from .services import chain_count_at

        assert self._last_hash is not None
        return signing.make_head(self._last_entry, self._last_hash, chain_count_at(self._last_entry))

    @property
    def head_line(self) -> str:
        """The NDJSON export's last line: `{"signed_head": {...}}` (audit_only, once rows were written)."""
        return _compact_json({"signed_head": self.signed_head}) + "\n"

    def encode(self, rows: Sequence[Row], last: bool) -> list[bytes]:
        """A page read by read_page() as the file's next bytes, in pieces of ENCODE_SLICE rows: what
        encoding holds at once stays small whatever the page size (no database work)."""
        pieces = []
        start = "" if self._started else self.format.start
        if not self._started and self.audit_only and self.format.name == "csv":
            start = _csv_text(iter([AUDIT_COLUMNS]))
        self._started = True
        for offset in range(0, len(rows), ENCODE_SLICE):
            part = rows[offset : offset + ENCODE_SLICE]
            text = self._encode_page(part, self.rows_written == 0)
            self.rows_written += len(part)
            self.last_position = part[-1][-1]
            pieces.append((start + text).encode())
            start = ""
        if last:
            self._finished = True
        end = ""
        if last:
            end = self.format.end
            if self.audit_only and self.format.name == "ndjson" and self.signed_head is not None:
                end = self.head_line + end
        if start or end:
            pieces.append((start + end).encode())
        return [piece for piece in pieces if piece]


def export_from_params(params: Mapping[str, Any]) -> EventExport:
    """An export of `format`, `audit_only` and the events' filters; an ApplicationError (400) names a bad
    one."""
    name = str(params.get("format") or DEFAULT_FORMAT)
    export_format = FORMATS.get(name)
    if export_format is None:
        raise parameter_error("format", f"Choose one of {', '.join(FORMATS)}; got {name[:40]!r}.")
    audit_only = str(params.get("audit_only") or "").strip().lower()
    if audit_only not in _TRUE | _FALSE:
        raise parameter_error("audit_only", f"Enter true or false; got {audit_only[:40]!r}.")
    filterset = validated_filters(StoredEventFilter, params)
    return EventExport(filterset=filterset, export_format=export_format, audit_only=audit_only in _TRUE)
