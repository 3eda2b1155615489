"""GET /api/events/ and /api/events/{event_id}/: filters, cursor pagination, errors, roles, query counts."""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import pytest
from channels.db import database_sync_to_async
from django.db.backends.signals import connection_created
from django.test import AsyncClient

from accounts.services import api_token_issue
from events.agent_events import AgentSwitchedEvent
from events.base import BaseEvent
from events.event_bus import event_bus
from events.event_store import event_store
from events.models import StoredEvent, row_to_contract_dict
from events.selectors import CONTRACT_FIELDS
from events.session_events import SessionCreatedEvent

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/api/events/"
START = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def tokens() -> dict[str, str]:
    return {
        role: api_token_issue(username=f"{role}-1", group=group).token
        for role, group in (("auditor", "auditors"), ("operator", "operators"), ("agent", "agents"))
    }


def varied_events(count: int) -> list[BaseEvent]:
    """Events over three sessions (one null), two correlations, three types and categories, a minute apart."""
    events: list[BaseEvent] = []
    for n in range(count):
        moment = START + timedelta(minutes=n)
        session = [f"s-{n % 2}", None, "s-0"][n % 3]
        correlation = f"c-{n % 4 // 2}"
        if n % 3 == 0:
            event: BaseEvent = AgentSwitchedEvent(
                session_id=session,
                correlation_id=correlation,
                from_agent="orchestrator",
                to_agent=f'coder "{n}", ünïcode',
                timestamp=moment,
            )
        elif n % 3 == 1:
            event = BaseEvent(
                "tick",
                "metrics",
                session_id=session,
                correlation_id=correlation,
                data={"n": n},
                timestamp=moment,
            )
        else:
            event = SessionCreatedEvent(
                session_id=session, correlation_id=correlation, causation_id=f"cause-{n}", timestamp=moment
            )
        event.actor = f"user-{n % 2}"
        events.append(event)
    return events


@database_sync_to_async
def seed(count: int) -> list[int]:
    """Store `count` varied events at once, after whatever the bus still holds (the tokens' own events)."""
    event_bus.drain_sync(timeout=10)
    event_store.flush_sync(timeout=10)
    return event_store._write_batch(varied_events(count))


@database_sync_to_async
def stored(**filters) -> list[dict]:
    rows = StoredEvent.objects.filter(**filters).order_by("position").values(*CONTRACT_FIELDS)
    return [row_to_contract_dict(row) for row in rows]


async def get(path: str, token: str | None, **params):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    query = f"?{urlencode(params)}" if params else ""
    return await AsyncClient().get(f"{path}{query}", headers=headers)


async def read_all(token: str, **params) -> tuple[list[dict], int]:
    """Every page from the first, following `next`; the rows and the number of pages."""
    response = await get(URL, token, **params)
    rows, pages = [], 0
    while True:
        assert response.status_code == 200, response.content
        body = response.json()
        rows.extend(body["results"])
        pages += 1
        if body["next"] is None:
            return rows, pages
        response = await AsyncClient().get(body["next"], headers={"Authorization": f"Bearer {token}"})


# The list


async def test_the_list_is_the_stored_events_as_the_contract_says(tokens):
    await seed(12)
    response = await get(URL, tokens["auditor"])
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"next", "previous", "results"}
    assert body["next"] is None and body["previous"] is None
    assert body["results"] == await stored()
    (first, *_rest) = [row for row in body["results"] if row["event_type"] == "agent_switched"]
    assert list(first) == [
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
        "position",
    ]
    assert first["timestamp"] == "2026-01-01T00:00:00Z"
    assert "actor" not in first  # the event of the contract, not the store's bookkeeping


FILTERS = [
    ({"session_id": "s-0"}, {"session_id": "s-0"}),
    ({"correlation_id": "c-1"}, {"correlation_id": "c-1"}),
    ({"event_type": "session_created"}, {"event_type": "session_created"}),
    ({"event_category": "metrics"}, {"event_category": "metrics"}),
    ({"since": "2026-01-01T00:05:00Z"}, {"timestamp__gte": START + timedelta(minutes=5)}),
    ({"since": "2026-01-01T01:05:00+01:00"}, {"timestamp__gte": START + timedelta(minutes=5)}),
    ({"since": "2026-01-01T00:05:00"}, {"timestamp__gte": START + timedelta(minutes=5)}),  # naive: UTC
    ({"until": "2026-01-01T00:05:00Z"}, {"timestamp__lt": START + timedelta(minutes=5)}),
    (
        {"since": "2026-01-01T00:03:00Z", "until": "2026-01-01T00:09:00Z", "session_id": "s-0"},
        {
            "timestamp__gte": START + timedelta(minutes=3),
            "timestamp__lt": START + timedelta(minutes=9),
            "session_id": "s-0",
        },
    ),
]


@pytest.mark.parametrize(("params", "lookup"), FILTERS, ids=lambda value: urlencode(value))
async def test_each_filter_selects_what_it_names(tokens, params, lookup):
    await seed(14)
    expected = await stored(**lookup)
    assert 0 < len(expected) < len(await stored())  # the filter does select
    rows, _ = await read_all(tokens["auditor"], **params)
    assert rows == expected


async def test_after_is_a_position(tokens):
    positions = await seed(10)
    rows, _ = await read_all(tokens["auditor"], after=positions[6])
    assert [row["position"] for row in rows] == positions[7:]
    rows, _ = await read_all(tokens["auditor"], after=0)
    assert rows == await stored()


async def test_an_empty_filter_value_is_no_filter(tokens):
    await seed(5)
    rows, _ = await read_all(tokens["auditor"], session_id="", since="", event_category="")
    assert rows == await stored()


# Pagination


async def test_following_next_reads_every_event_once_in_order(tokens):
    await seed(23)
    positions = [row["position"] for row in await stored()]
    rows, pages = await read_all(tokens["auditor"], limit=5)
    assert pages == -(-len(positions) // 5)
    assert [row["position"] for row in rows] == positions  # no gap, no duplicate, ascending


async def test_pagination_keeps_the_filters(tokens):
    await seed(30)
    rows, pages = await read_all(tokens["auditor"], limit=3, session_id="s-0")
    assert rows == await stored(session_id="s-0") and pages > 2


async def test_previous_goes_back_a_page(tokens):
    await seed(9)
    positions = [row["position"] for row in await stored()]
    first = (await get(URL, tokens["auditor"], limit=4)).json()
    second = (await AsyncClient().get(first["next"], headers=auth(tokens["auditor"]))).json()
    assert [row["position"] for row in second["results"]] == positions[4:8]
    back = (await AsyncClient().get(second["previous"], headers=auth(tokens["auditor"]))).json()
    assert back["results"] == first["results"]


async def test_events_stored_while_paging_are_read_too(tokens):
    positions = await seed(4)
    first = (await get(URL, tokens["auditor"], limit=4, after=positions[0] - 1)).json()
    assert [row["position"] for row in first["results"]] == positions
    assert first["next"] is None  # the last page, for now
    more = await seed(3)
    # Reading on from the last position received misses nothing committed since.
    rows, _ = await read_all(tokens["auditor"], after=first["results"][-1]["position"])
    assert [row["position"] for row in rows] == more


async def test_the_page_size_is_100_by_default_and_at_most_500(tokens):
    await seed(120)
    body = (await get(URL, tokens["auditor"])).json()
    assert len(body["results"]) == 100 and body["next"]
    assert (await get(URL, tokens["auditor"], limit=500)).json()["results"] == await stored()
    response = await get(URL, tokens["auditor"], limit=501)
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "limit"


# Bad input: 400 naming the parameter, never a 500


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("since", "yesterday"),
        ("since", "2026-13-01T00:00:00Z"),
        ("until", "2026-01-01T25:00:00"),
        ("since", "9999-12-31T23:59:59-23:59"),  # past year 9999 in UTC
        ("after", "-1"),
        ("after", "ten"),
        ("after", "1.5"),
        ("after", str(2**63)),  # larger than a BIGINT
        ("event_category", "bogus"),
        ("session_id", "x" * 256),
        ("correlation_id", "a\x00b"),  # PostgreSQL cannot compare text with a NUL
        ("limit", "0"),
        ("limit", "many"),
        ("cursor", "not-a-cursor"),
        ("cursor", "cD1hYmM="),  # base64 of p=abc: a cursor whose position is not a number
    ],
)
async def test_a_bad_parameter_is_a_400_naming_it(tokens, param, value):
    await seed(3)
    response = await get(URL, tokens["auditor"], **{param: value})
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["code"] == "invalid"
    assert body["detail"].startswith(f"{param}: ")
    assert body["errors"][0]["field"] == param


async def test_the_example_error_of_the_issue(tokens):
    response = await get(URL, tokens["auditor"], since="not a date")
    assert response.status_code == 400
    assert response.json() == {
        "detail": "since: Enter a valid date/time.",
        "code": "invalid",
        "errors": [{"field": "since", "message": "Enter a valid date/time.", "code": "invalid"}],
    }


async def test_every_bad_parameter_is_listed(tokens):
    response = await get(URL, tokens["auditor"], since="x", after="y")
    assert response.status_code == 400
    assert {error["field"] for error in response.json()["errors"]} == {"since", "after"}
    assert "(and 1 more)" in response.json()["detail"]


# One event


async def test_one_event_by_its_id(tokens):
    await seed(3)
    (expected, *_rest) = await stored()
    response = await get(f"{URL}{expected['event_id']}/", tokens["auditor"])
    assert response.status_code == 200
    assert response.json() == expected


@pytest.mark.parametrize("event_id", ["0b1d2c3e-4f50-4a6b-8c7d-9e0f1a2b3c4d", "not-a-uuid", "1234", "%00"])
async def test_an_unknown_or_malformed_event_id_is_a_404(tokens, event_id):
    response = await get(f"{URL}{event_id}/", tokens["auditor"])
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


# Who may read


@pytest.mark.parametrize(
    ("role", "status"), [("auditor", 200), ("operator", 200), ("agent", 403), (None, 401)]
)
async def test_auditors_and_operators_read_agents_and_anonymous_do_not(tokens, role, status):
    await seed(2)
    (event, *_rest) = await stored()
    token = tokens[role] if role else None
    for path in (URL, f"{URL}{event['event_id']}/"):
        response = await get(path, token)
        assert response.status_code == status, path
        if status != 200:
            assert set(response.json()) >= {"detail", "code"}


async def test_a_signed_in_auditor_reads_with_the_session_cookie(tokens):
    await seed(1)
    user = (await database_sync_to_async(api_token_issue)(username="auditor-1", group="auditors")).user
    client = AsyncClient()
    await client.aforce_login(user)
    assert (await client.get(URL)).status_code == 200


# Cost


@contextmanager
def queries_in_every_thread() -> Iterator[list[str]]:
    """The SQL run on every connection opened meanwhile: the views query from worker threads."""
    executed: list[str] = []

    def record(execute, sql, params, many, context):
        executed.append(sql)
        return execute(sql, params, many, context)

    wrapped = []

    def install(sender, connection, **kwargs):
        # A thread's connection object outlives its closes: wrap it once, unwrap it at the end.
        if record not in connection.execute_wrappers:
            connection.execute_wrappers.append(record)
            wrapped.append(connection)

    connection_created.connect(install)
    try:
        yield executed
    finally:
        connection_created.disconnect(install)
        for connection in wrapped:
            connection.execute_wrappers.remove(record)


async def test_the_number_of_queries_does_not_grow_with_the_page_size(tokens):
    await seed(500)
    await get(URL, tokens["auditor"])  # the token's first use of the minute is recorded: not counted below
    counts = {}
    for limit in (1, 500):
        with queries_in_every_thread() as executed:
            response = await get(URL, tokens["auditor"], limit=limit, event_category="agent")
        assert response.status_code == 200
        counts[limit] = len(executed)
        page_queries = [sql for sql in executed if "events_storedevent" in sql]
        assert len(page_queries) == 1  # one query for the page, and no COUNT
        assert "COUNT" not in page_queries[0].upper() and "OFFSET" not in page_queries[0].upper()
    assert counts[1] == counts[500]
    event_id = (await stored())[0]["event_id"]
    with queries_in_every_thread() as executed:
        assert (await get(f"{URL}{event_id}/", tokens["auditor"])).status_code == 200
    assert len([sql for sql in executed if "events_storedevent" in sql]) == 1, executed


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
