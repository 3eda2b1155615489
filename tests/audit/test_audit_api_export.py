"""GET /api/audit/, GET /api/audit/export/ and manage.py export_audit: the rows, the formats, the
filters shared with /api/events/, resuming, audit_only, roles, streaming and keyset queries."""

import asyncio
import csv
import io
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from channels.db import database_sync_to_async
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import AsyncClient
from django.test.utils import CaptureQueriesContext

from accounts.services import api_token_issue
from audit import exports
from audit.management.commands import export_audit
from audit.models import AuditEntry
from audit.selectors import AUDIT_ENTRY_FIELDS, audit_entry_as_dict
from events.agent_events import AgentErrorOccurredEvent, AgentSwitchedEvent
from events.base import BaseEvent
from events.event_bus import event_bus
from events.event_store import event_store
from events.models import StoredEvent, row_to_contract_dict
from events.selectors import CONTRACT_FIELDS
from events.tool_events import ToolExecutionFailedEvent
from tests.events.test_events_read_api import queries_in_every_thread

pytestmark = pytest.mark.django_db(transaction=True)

EXPORT = "/api/audit/export/"
AUDIT = "/api/audit/"
EVENTS = "/api/events/"
START = datetime(2026, 3, 1, tzinfo=UTC)
KEYS = list(CONTRACT_FIELDS)


@pytest.fixture
def tokens() -> dict[str, str]:
    return {
        role: api_token_issue(username=f"{role}-1", group=group).token
        for role, group in (("auditor", "auditors"), ("operator", "operators"), ("agent", "agents"))
    }


@pytest.fixture
def small_pages(monkeypatch):
    """Export pages of 7 rows, so a few dozen events take several pages (and chunks)."""
    monkeypatch.setattr(exports, "EXPORT_PAGE_SIZE", 7)


def tricky_events(count: int) -> list[BaseEvent]:
    """Events whose text needs quoting in CSV and escaping in JSON; null and empty ids; audited and not."""
    events: list[BaseEvent] = []
    for n in range(count):
        moment = START + timedelta(seconds=n, microseconds=n * 1001 % 1_000_000)
        session = [f"s-{n % 2}", None, ""][n % 3]
        correlation = None if n % 5 == 0 else f"c-{n % 4}"
        kind = n % 4
        if kind == 0:
            event: BaseEvent = AgentSwitchedEvent(
                session_id=session,
                correlation_id=correlation,
                from_agent="orchestrator",
                to_agent=f'coder, "the {n}th"',
                reason="line one\nline two\r\nend",
                timestamp=moment,
            )
        elif n % 8 == 3:
            event = ToolExecutionFailedEvent(
                session_id=session,
                correlation_id=correlation,
                tool_name="write_file",
                call_id=f"call-{n}",
                error_message="disk full",
                duration_ms=12.5,
                timestamp=moment,
            )
        elif kind == 1:
            event = AgentErrorOccurredEvent(
                session_id=session, agent_type="coder", error_message="ünïcødé ✓ \u2028", timestamp=moment
            )
        else:
            event = BaseEvent(
                "tick",
                "metrics",
                session_id=session,
                correlation_id=correlation,
                causation_id=f"cause-{n}" if n % 2 else None,
                data={"n": n, "ratio": n / 7, "nested": {"list": [1, None, True, "a,b"]}, "empty": ""},
                timestamp=moment,
            )
        event.actor = ["alice", "bob", None][n % 3]
        events.append(event)
    return events


def settle() -> None:
    event_bus.drain_sync(timeout=10)
    event_store.flush_sync(timeout=10)


def seed_sync(count: int) -> list[int]:
    settle()  # the tokens' own events (group changes) first
    return event_store._write_batch(tricky_events(count))


seed = database_sync_to_async(seed_sync)


def stored_sync(**filters) -> list[dict]:
    rows = StoredEvent.objects.filter(**filters).order_by("position").values(*CONTRACT_FIELDS)
    return [row_to_contract_dict(row) for row in rows]


stored = database_sync_to_async(stored_sync)


@database_sync_to_async
def audited_positions() -> list[int]:
    entries = AuditEntry.objects.filter(kind="event").order_by("position")
    return list(entries.values_list("position", flat=True))


def auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


async def get(path: str, token: str | None, **params):
    query = f"?{urlencode(params)}" if params else ""
    return await AsyncClient().get(f"{path}{query}", headers=auth(token))


async def download(token: str, **params) -> tuple[Any, bytes, int]:
    """The export's response, its body and the number of chunks it came in."""
    response = await get(EXPORT, token, **params)
    assert response.status_code == 200, response.content
    chunks = [chunk async for chunk in response.streaming_content]
    return response, b"".join(chunks), len(chunks)


def read_csv(text: str) -> list[list[str | None]]:
    """CSV whose values are all quoted but nulls (empty, unquoted), as Python 3.12's csv.QUOTE_NOTNULL
    reads it, with lines ending in \\n."""
    rows: list[list[str | None]] = []
    row: list[str | None] = []
    at = 0
    while at < len(text):
        if text[at] == '"':
            start, parts = at + 1, []
            while True:
                quote = text.index('"', start)
                if text.startswith('""', quote):
                    parts.append(text[start : quote + 1])
                    start = quote + 2
                else:
                    parts.append(text[start:quote])
                    at = quote + 1
                    break
            row.append("".join(parts))
        else:
            row.append(None)
        if text.startswith(",", at):
            at += 1
        elif text.startswith("\n", at):
            at += 1
            rows.append(row)
            row = []
        else:
            raise AssertionError(f"unexpected {text[at : at + 20]!r} at {at}")
    if sys.version_info >= (3, 12):  # the standard library agrees
        assert list(csv.reader(io.StringIO(text, newline=""), quoting=csv.QUOTE_NOTNULL)) == rows
    return rows


def parse(export_format: str, body: bytes) -> list[dict]:
    """An export's rows as the contract's dicts."""
    text = body.decode()
    if export_format == "json":
        return json.loads(text)
    if export_format == "ndjson":
        assert text == "" or text.endswith("\n")
        return [json.loads(line) for line in text.splitlines()]
    header, *rows = read_csv(text)
    assert header in (KEYS, [*KEYS, *AUDIT_KEYS])
    events: list[dict] = []
    for row in rows:
        event: dict = dict(zip(header, row, strict=True))
        event["data"] = json.loads(event["data"])
        event["position"] = int(event["position"])
        if "entry_id" in event:
            event["entry_id"] = int(event["entry_id"])
        events.append(event)
    return events


# With audit_only, each row also carries its place in the chain (tests/audit/test_evidence.py checks it).
AUDIT_KEYS = ["entry_id", "kind", "actor", "prev_hash", "hash"]


def events_of(rows: list[dict]) -> list[dict]:
    """An audit_only export's rows as the contract's events (their chain keys left out)."""
    return [{key: value for key, value in row.items() if key not in AUDIT_KEYS} for row in rows]


async def read_list(path: str, token: str, **params) -> list[dict]:
    """Every row of a paginated list, following `next`."""
    response = await get(path, token, **params)
    rows = []
    while True:
        assert response.status_code == 200, response.content
        body = response.json()
        rows.extend(body["results"])
        if body["next"] is None:
            return rows
        response = await AsyncClient().get(body["next"], headers=auth(token))


# Formats


@pytest.mark.parametrize(
    ("export_format", "media_type"),
    [("csv", "text/csv"), ("ndjson", "application/x-ndjson"), ("json", "application/json")],
)
async def test_each_format_parses_back_to_exactly_the_stored_events(
    tokens, small_pages, export_format, media_type
):
    await seed(40)
    response, body, chunks = await download(tokens["auditor"], format=export_format)
    assert parse(export_format, body) == await stored()
    assert response["Content-Type"] == f"{media_type}; charset=utf-8"
    assert re.fullmatch(
        rf'attachment; filename="events-\d{{8}}T\d{{6}}Z\.{export_format}"', response["Content-Disposition"]
    )
    assert chunks > 5  # page by page, not one buffer


async def test_csv_is_quoted_with_nulls_left_empty_and_data_compact(tokens):
    await seed(6)
    _response, body, _chunks = await download(tokens["auditor"], format="csv")
    text = body.decode()
    assert text.startswith('"' + '","'.join(KEYS) + '"\n')
    rows = read_csv(text)[1:]
    sessions = {row[KEYS.index("session_id")] for row in rows}
    assert {None, "", "s-0"} <= sessions  # null and the empty string stay apart
    switch = next(row for row in rows if row[KEYS.index("event_type")] == "agent_switched")
    data = switch[KEYS.index("data")]
    assert data == json.dumps(json.loads(data), separators=(",", ":"), ensure_ascii=False)
    assert "ünïcødé" in text  # UTF-8, not \\u escapes
    # Every reader of CSV gets the same number of rows and columns.
    assert [len(row) for row in csv.reader(io.StringIO(text, newline=""))] == [len(KEYS)] * (len(rows) + 1)


async def test_an_empty_export_is_a_valid_file(tokens):
    for export_format in ("csv", "ndjson", "json"):
        _response, body, _chunks = await download(tokens["auditor"], format=export_format, session_id="none")
        assert parse(export_format, body) == []


async def test_the_default_format_is_csv(tokens):
    await seed(2)
    response, body, _chunks = await download(tokens["auditor"])
    assert response["Content-Type"].startswith("text/csv")
    assert parse("csv", body) == await stored()


async def test_the_export_streams_from_an_async_iterator(tokens, small_pages):
    await seed(20)
    response = await get(EXPORT, tokens["auditor"], format="ndjson")
    assert response.streaming and response.is_async  # nothing holds a thread while the client reads
    first = await anext(aiter(response.streaming_content))
    assert first.endswith(b"\n") and len(first.splitlines()) == 7  # the first page, before the others


async def test_a_client_that_goes_away_stops_the_export(small_pages):
    await seed(30)
    export = exports.export_from_params({"format": "ndjson"})
    pieces = export.achunks()
    first = await anext(pieces)
    await pieces.aclose()  # what Django does when the client disconnects
    await asyncio.sleep(0.2)  # the page being read ahead finishes in its thread, and is dropped
    assert len(first.splitlines()) == 7
    assert export.rows_written == 7 and not export._finished


def test_the_export_reads_by_keyset_one_page_per_query(small_pages):
    seed_sync(30)
    export = exports.export_from_params({"format": "ndjson"})
    with CaptureQueriesContext(connection) as queries:
        body = b"".join(export.chunks())
    sql = [query["sql"].upper() for query in queries]
    total = len(stored_sync())
    assert len(sql) == total // 7 + 1  # a page per query, the last one short
    assert all("LIMIT 7" in statement and "OFFSET" not in statement for statement in sql)
    assert all('"POSITION" >' in statement for statement in sql[1:])
    assert parse("ndjson", body) == stored_sync()


@pytest.mark.postgres
@pytest.mark.parametrize("export_format", ["csv", "ndjson", "json"])
def test_postgresql_formats_the_same_file_as_python(export_format):
    seed_sync(30)
    awkward = BaseEvent(
        "tick",
        "metrics",
        session_id='quote " comma , colon : backslash \\',
        data={
            'key": "with, separators': 'value": "x", "y": [1, 2]',
            "path": 'C:\\dir\\"name"\\',
            "controls": "\t\x01\x1f\x7f\u2028\u2029 é 😀",
            "nested": {"a b": [{"c": None}, [], {}], "d": -0.5, "e": 10**20, "f": True},
            "": "",
        },
    )
    event_store._write_batch([awkward])
    export_format_ = exports.FORMATS[export_format]
    filterset = exports.validated_filters(exports.StoredEventFilter, {})
    files = [
        b"".join(
            exports.EventExport(
                filterset=filterset, export_format=export_format_, in_database=in_database
            ).chunks()
        )
        for in_database in (True, False)
    ]
    assert files[0] == files[1]
    assert parse(export_format, files[0]) == stored_sync()


# Filters: the same rows as the list


FILTER_CASES = [
    {},
    {"session_id": "s-1"},
    {"session_id": ""},  # an empty value is no filter, in the list and in the export alike
    {"correlation_id": "c-2"},
    {"event_type": "tick"},
    {"event_category": "agent"},
    {"since": "2026-03-01T00:00:10Z"},
    {"until": "2026-03-01T00:00:10Z"},
    {"since": "2026-03-01T01:00:05+01:00", "until": "2026-03-01T00:00:20Z", "event_type": "tick"},
]


@pytest.mark.parametrize("params", FILTER_CASES, ids=lambda params: urlencode(params) or "none")
async def test_the_export_has_the_rows_of_the_list(tokens, small_pages, params):
    positions = await seed(30)
    params = {**params, "after": positions[0] - 1} if not params else params
    listed = await read_list(EVENTS, tokens["auditor"], limit=4, **params)
    assert listed  # every case selects something
    _response, body, _chunks = await download(tokens["auditor"], format="json", **params)
    assert json.loads(body) == listed


async def test_after_resumes_an_interrupted_export(tokens, small_pages):
    await seed(25)
    _response, body, _chunks = await download(tokens["auditor"], format="ndjson")
    everything = parse("ndjson", body)
    received = everything[:11]  # the connection broke here
    _response, body, _chunks = await download(
        tokens["auditor"], format="ndjson", after=received[-1]["position"]
    )
    assert received + parse("ndjson", body) == everything


async def test_audit_only_exports_the_audited_events(tokens, small_pages):
    await seed(30)
    audited = await audited_positions()
    everything = await stored()
    assert 0 < len(audited) < len(everything)
    _response, body, _chunks = await download(tokens["auditor"], format="csv", audit_only="true")
    assert events_of(parse("csv", body)) == [event for event in everything if event["position"] in audited]
    # With filters and after, like any export.
    _response, body, _chunks = await download(
        tokens["auditor"], format="json", audit_only="true", session_id="s-0", after=audited[2]
    )
    assert events_of(json.loads(body)) == [
        event
        for event in everything
        if event["position"] in audited and event["session_id"] == "s-0" and event["position"] > audited[2]
    ]
    _response, body, _chunks = await download(tokens["auditor"], format="json", audit_only="false")
    assert json.loads(body) == everything


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("format", "xml"),
        ("audit_only", "maybe"),
        ("since", "tomorrow"),
        ("after", "-3"),
        ("event_category", "nope"),
    ],
)
async def test_a_bad_parameter_is_a_400_naming_it(tokens, param, value):
    response = await AsyncClient().get(
        f"{EXPORT}?{urlencode({param: value})}", headers={**auth(tokens["auditor"]), "Accept": "text/csv"}
    )
    assert response.status_code == 400
    body = response.json()
    assert body["detail"].startswith(f"{param}: ") and body["errors"][0]["field"] == param


# The audit trail


@database_sync_to_async
def audit_rows(**filters) -> list[dict]:
    entries = AuditEntry.objects.filter(**filters).order_by("id").values(*AUDIT_ENTRY_FIELDS)
    return [audit_entry_as_dict(entry) for entry in entries]


async def test_the_audit_trail_lists_entries_with_who_acted(tokens):
    await seed(12)
    rows = await read_list(AUDIT, tokens["auditor"], limit=2)
    assert rows == await audit_rows()
    assert {row["actor"] for row in rows} >= {"alice", "bob"}
    assert set(rows[0]) == {
        "entry_id",
        "kind",
        "position",
        "event_id",
        "event_type",
        "event_category",
        "timestamp",
        "session_id",
        "correlation_id",
        "actor",
        "data",
        "source",
        "hash",
    }


@pytest.mark.parametrize(
    ("params", "lookup"),
    [
        ({"actor": "alice"}, {"actor": "alice"}),
        ({"session_id": "s-0"}, {"session_id": "s-0"}),
        ({"event_type": "agent_error_occurred"}, {"event_type": "agent_error_occurred"}),
        ({"event_category": "agent"}, {"event_category": "agent"}),
        ({"event_category": "tool"}, {"event_category": "tool"}),
        ({"since": "2026-03-01T00:00:05Z"}, {"timestamp__gte": START + timedelta(seconds=5)}),
        ({"until": "2026-03-01T00:00:05Z"}, {"timestamp__lt": START + timedelta(seconds=5)}),
    ],
)
async def test_the_audit_trail_filters(tokens, params, lookup):
    await seed(20)
    expected = await audit_rows(**lookup)
    assert expected
    assert await read_list(AUDIT, tokens["auditor"], limit=3, **params) == expected


async def test_the_audit_trail_after_a_position(tokens):
    await seed(20)
    audited = await audited_positions()
    rows = await read_list(AUDIT, tokens["auditor"], after=audited[3])
    assert [row["position"] for row in rows] == audited[4:]


async def test_a_bad_audit_filter_is_a_400(tokens):
    response = await get(AUDIT, tokens["auditor"], actor="x" * 300)
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "actor"


async def test_the_audit_trail_costs_one_query_per_page(tokens):
    await seed(40)
    await get(AUDIT, tokens["auditor"])  # the token's use is recorded once a minute: not counted below
    counts = []
    for limit in (1, 40):
        with queries_in_every_thread() as executed:
            response = await get(AUDIT, tokens["auditor"], limit=limit)
        assert response.status_code == 200
        assert len([sql for sql in executed if "audit_auditentry" in sql]) == 1
        counts.append(len(executed))
    assert counts[0] == counts[1]


# Who may read and export


@pytest.mark.parametrize(
    ("role", "trail", "export"),
    [("auditor", 200, 200), ("operator", 403, 403), ("agent", 403, 403), (None, 401, 401)],
)
async def test_auditors_read_and_export_others_do_not(tokens, role, trail, export):
    token = tokens[role] if role else None
    assert (await get(AUDIT, token)).status_code == trail
    response = await get(EXPORT, token, format="csv")
    assert response.status_code == export
    if export != 200:
        assert response["Content-Type"] == "application/json"
        assert set(response.json()) >= {"detail", "code"}


# The command


def test_the_command_writes_a_file_and_reports_progress(tmp_path: Path, small_pages, monkeypatch):
    seed_sync(30)
    monkeypatch.setattr(export_audit, "PROGRESS_INTERVAL_S", 0)
    target = tmp_path / "trail.ndjson"
    err = io.StringIO()
    call_command(
        "export_audit", "--format", "ndjson", "--output", str(target), stderr=err, stdout=io.StringIO()
    )
    assert parse("ndjson", target.read_bytes()) == stored_sync()
    progress = err.getvalue()
    assert progress.count("\r") >= 4  # a line updated in place, page after page
    assert re.search(rf"{len(stored_sync())} events written, [\d,]+ events/s, [\d.]+ s - done\.\n$", progress)


@pytest.mark.parametrize("export_format", ["csv", "json"])
def test_the_command_writes_to_stdout_with_the_filters(export_format):
    positions = seed_sync(20)
    out = io.StringIO()
    call_command(
        "export_audit",
        "--format",
        export_format,
        "--session-id",
        "s-1",
        "--after",
        str(positions[3]),
        stdout=out,
        stderr=io.StringIO(),
    )
    expected = [e for e in stored_sync(session_id="s-1") if e["position"] > positions[3]]
    assert expected and parse(export_format, out.getvalue().encode()) == expected


def test_the_command_exports_the_audit_trail_alone():
    seed_sync(20)
    out = io.StringIO()
    call_command("export_audit", "--audit-only", "--format", "json", stdout=out, stderr=io.StringIO())
    audited = set(AuditEntry.objects.filter(kind="event").values_list("position", flat=True))
    assert events_of(json.loads(out.getvalue())) == [e for e in stored_sync() if e["position"] in audited]


@pytest.mark.parametrize(
    ("option", "value"),
    [("--since", "last week"), ("--after", "-1"), ("--event-category", "nope"), ("--until", "2026-02-30")],
)
def test_the_command_names_a_bad_option(option, value):
    with pytest.raises(CommandError, match=f"^{option}: "):
        call_command("export_audit", option, value, stdout=io.StringIO(), stderr=io.StringIO())
