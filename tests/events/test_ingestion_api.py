"""POST /api/events/: validation before publishing, commit before 201, order, idempotency, limits."""

import asyncio
import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.test import AsyncClient

from accounts.services import api_token_issue
from events.event_bus import event_bus
from events.event_store import EventStoreError
from events.models import StoredEvent

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/api/events/"


@pytest.fixture
def agent_token() -> str:
    return api_token_issue(username="agent-007", group="agents").token


@pytest.fixture
def session_id() -> str:
    return f"ingest-{uuid.uuid4()}"


def switch(session_id: str, n: int = 0, **extra) -> dict:
    return {
        "event_type": "agent_switched",
        "session_id": session_id,
        "data": {"from_agent": "orchestrator", "to_agent": f"coder-{n}", "confidence": "high"},
        **extra,
    }


async def post(body, token: str | None, *, content_type: str = "application/json", raw: bytes | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = raw if raw is not None else json.dumps(body)
    return await AsyncClient().post(URL, data, content_type=content_type, headers=headers)


@database_sync_to_async
def stored(session_id: str) -> list[dict]:
    rows = StoredEvent.objects.filter(session_id=session_id).order_by("position")
    return list(rows.values("position", "event_id", "event_type", "actor", "data", "timestamp"))


# Publishing


async def test_a_single_event_is_stored_before_the_201(agent_token, session_id):
    response = await post(switch(session_id), agent_token)
    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == {"positions", "event_ids", "position"}
    assert body["positions"] == [body["position"]] and isinstance(body["position"], int)
    (row,) = await stored(session_id)
    assert row["position"] == body["position"]
    assert str(row["event_id"]) == body["event_ids"][0]
    assert row["event_type"] == "agent_switched" and row["actor"] == "agent-007"


async def test_missing_event_id_and_timestamp_are_filled_in(agent_token, session_id):
    before = datetime.now(UTC)
    response = await post(switch(session_id), agent_token)
    assert response.status_code == 201
    event_id = response.json()["event_ids"][0]
    assert str(uuid.UUID(event_id)) == event_id
    (row,) = await stored(session_id)
    assert before - timedelta(seconds=1) <= row["timestamp"] <= datetime.now(UTC)


async def test_a_list_is_stored_in_list_order(agent_token, session_id):
    events = [switch(session_id, n, event_id=str(uuid.uuid4())) for n in range(50)]
    events.insert(10, {"event_type": "custom_tick", "event_category": "metrics", "session_id": session_id})
    response = await post(events, agent_token)
    assert response.status_code == 201, response.content
    body = response.json()
    assert "position" not in body
    positions = body["positions"]
    assert len(positions) == 51
    assert all(a < b for a, b in zip(positions, positions[1:], strict=False))  # strictly increasing
    assert body["event_ids"][:10] == [e["event_id"] for e in events[:10]]
    rows = await stored(session_id)
    assert [r["position"] for r in rows] == positions
    assert [str(r["event_id"]) for r in rows] == body["event_ids"]
    assert [r["data"].get("to_agent") for r in rows][:3] == ["coder-0", "coder-1", "coder-2"]


async def test_the_same_event_id_again_is_201_and_stored_once(agent_token, session_id):
    event = switch(session_id, event_id=str(uuid.uuid4()))
    first = await post(event, agent_token)
    again = await post(event, agent_token)
    assert first.status_code == again.status_code == 201
    assert again.json()["position"] == first.json()["position"]
    batch = [event, switch(session_id, 1, event_id=str(uuid.uuid4()))]
    retried = [await post(batch, agent_token) for _ in range(2)]
    assert retried[0].json() == retried[1].json()
    assert retried[0].json()["positions"][0] == first.json()["position"]
    assert len(await stored(session_id)) == 2


async def test_the_actor_is_the_token_user_whatever_the_event_says(agent_token, session_id):
    event = switch(session_id)
    event["data"]["decided_by"] = "mallory"
    event["data"]["actor"] = "mallory"
    event["source"] = "mallory"
    assert (await post(event, agent_token)).status_code == 201
    (row,) = await stored(session_id)
    assert row["actor"] == "agent-007"

    forged = {**switch(session_id), "actor": "mallory"}  # not an event field: refused, not trusted
    response = await post(forged, agent_token)
    assert response.status_code == 400 and "actor" in response.json()["detail"]


async def test_posted_events_reach_the_bus_subscribers_in_order(agent_token, session_id):
    seen: list[tuple[str, str | None, int | None]] = []

    async def listener(event):
        seen.append((event.event_id, event.actor, event.position))

    event_bus.subscribe(event_type="agent_switched", handler=listener)
    response = await post([switch(session_id, n) for n in range(5)], agent_token)
    body = response.json()
    assert [s[0] for s in seen] == body["event_ids"]
    assert {s[1] for s in seen} == {"agent-007"}


async def test_the_commit_wait_does_not_hold_the_thread_sync_views_share(agent_token, session_id):
    """While the view waits for its events' handlers, sync code (a sync view) can still run."""
    # threading.Event: the bus may run its handlers on a loop of its own, in another thread.
    entered = threading.Event()
    released = threading.Event()

    async def slow(event):
        entered.set()
        while not released.is_set():
            await asyncio.sleep(0.01)

    event_bus.subscribe(event_type="agent_switched", handler=slow)
    request = asyncio.ensure_future(post(switch(session_id), agent_token))
    for _ in range(500):  # until the view is waiting for the handlers
        await asyncio.sleep(0.01)
        if entered.is_set():
            break
    try:
        assert entered.is_set()
        started = time.monotonic()
        await asyncio.wait_for(sync_to_async(lambda: None, thread_sensitive=True)(), timeout=5)
        assert time.monotonic() - started < 1
        assert not request.done()
    finally:
        released.set()
    assert (await request).status_code == 201


# Refused requests: nothing of them is stored


async def test_a_bad_event_is_named_by_index_and_field_and_nothing_is_stored(agent_token, session_id):
    events = [switch(session_id, n) for n in range(5)]
    events[3]["data"]["confidence"] = "x"
    response = await post(events, agent_token)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_event"
    assert body["detail"].startswith("events[3]: ")
    assert "data['confidence'] is 'x'; allowed: high, medium, low" in body["detail"]
    assert [e["index"] for e in body["errors"]] == [3]
    assert await stored(session_id) == []


async def test_every_bad_event_is_listed(agent_token, session_id):
    events = [switch(session_id, n) for n in range(4)]
    events[0]["event_id"] = "not-a-uuid"
    events[2] = {"event_type": "message_added", "session_id": session_id, "data": {"role": "robot"}}
    events.append([1, 2])
    response = await post(events, agent_token)
    body = response.json()
    assert response.status_code == 400
    assert [e["index"] for e in body["errors"]] == [0, 2, 4]
    assert "not a UUID" in body["errors"][0]["message"]
    assert "data['role']" in body["errors"][1]["message"]
    assert "JSON object" in body["errors"][2]["message"]
    assert "(and 2 more)" in body["detail"]
    assert await stored(session_id) == []


@pytest.mark.parametrize(
    "field, value",
    [
        ("timestamp", "yesterday"),
        ("timestamp", 12),
        ("event_category", "weather"),
        ("session_id", ["a"]),
        ("data", "text"),
        ("event_type", ""),
        ("source", "s" * 300),
    ],
)
async def test_bad_fields_are_400_never_500(agent_token, session_id, field, value):
    response = await post([switch(session_id), {**switch(session_id), field: value}], agent_token)
    assert response.status_code == 400, response.content
    body = response.json()
    expected = "invalid_event_type" if field == "event_type" else "invalid_event"
    assert body["code"] == expected and body["errors"][0]["index"] == 1
    assert field in body["detail"] or field == "data"
    assert await stored(session_id) == []


@pytest.mark.parametrize(
    "data",
    [
        {"text": "\ud800"},  # a lone surrogate: not Unicode, no database can keep it
        {"a\u0000b": 1},  # NUL in a key: PostgreSQL's jsonb cannot keep it
        {"deep": {"list": [1, "\udfff"]}},
    ],
)
async def test_text_the_store_cannot_keep_is_400_naming_the_field(agent_token, session_id, data):
    response = await post({"event_type": "custom", "event_category": "system", "data": data}, agent_token)
    assert response.status_code == 400, response.content
    assert "data" in response.json()["detail"]
    # The store still works afterwards: nothing poisoned its writer.
    assert (await post(switch(session_id), agent_token)).status_code == 201


async def test_more_than_1000_events_is_400(agent_token, session_id):
    response = await post([switch(session_id, n) for n in range(1001)], agent_token)
    assert response.status_code == 400
    assert response.json()["code"] == "too_many_events"
    assert await stored(session_id) == []
    assert (await post([switch(session_id, n) for n in range(1000)], agent_token)).status_code == 201


@pytest.mark.parametrize(
    "raw, code",
    [
        (b"{not json", "parse_error"),
        (b"\xff\xfe\x00", "parse_error"),
        (b"[" * 100_000, "invalid"),
        (b'{"n": ' + b"9" * 5000 + b"}", "parse_error"),
        (b'"an event"', "invalid_body"),
        (b"[]", "invalid_body"),
        (b"null", "invalid_body"),
    ],
)
async def test_a_body_that_is_not_events_is_400(agent_token, raw, code):
    response = await post(None, agent_token, raw=raw)
    assert response.status_code == 400, response.content
    assert response.json()["code"] == code


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
)
async def test_a_body_that_is_not_json_is_415(agent_token, session_id, content_type):
    response = await post(switch(session_id), agent_token, content_type=content_type)
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"
    assert await stored(session_id) == []


async def test_a_json_content_type_with_a_charset_is_accepted(agent_token, session_id):
    response = await post(switch(session_id), agent_token, content_type="application/json; charset=utf-8")
    assert response.status_code == 201


@pytest.mark.parametrize("event_type", ["hitl_decision_made", "operator_signed_in", "audit_purged"])
async def test_events_only_the_server_makes_are_refused(agent_token, session_id, event_type):
    data = {
        "hitl_decision_made": {"call_id": "c-1", "decision": "APPROVE", "tool_name": "shell"},
        "operator_signed_in": {"username": "admin"},
        "audit_purged": {"before": "2020-01-01", "events_deleted": 0, "audit_entries_deleted": 0},
    }[event_type]
    events = [switch(session_id), {"event_type": event_type, "session_id": session_id, "data": data}]
    response = await post(events, agent_token)
    assert response.status_code == 403
    body = response.json()
    assert body["code"] == "reserved_event_type" and body["errors"][0]["index"] == 1
    assert body["detail"].startswith(f"events[1]: {event_type}")
    assert await stored(session_id) == []


async def test_a_decision_event_names_the_hitl_api(agent_token, session_id):
    event = {
        "event_type": "hitl_decision_made",
        "data": {"call_id": "c-1", "decision": "APPROVE", "tool_name": "shell"},
    }
    response = await post(event, agent_token)
    assert "HITL API" in response.json()["detail"]


async def test_an_oversized_body_is_413_before_it_is_read(agent_token, session_id, settings):
    settings.EVENTS_MAX_BODY_BYTES = 2_000
    events = [switch(session_id, n) for n in range(30)]
    assert len(json.dumps(events)) > 2_000
    response = await post(events, agent_token)
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    # Refused before authentication: even an anonymous client learns only the size limit.
    assert (await post(events, None)).status_code == 413
    assert await stored(session_id) == []


async def test_a_body_over_djangos_form_limit_but_under_ours_is_accepted(agent_token, session_id, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1_000
    events = [switch(session_id, n) for n in range(40)]
    assert len(json.dumps(events)) > 1_000
    response = await post(events, agent_token)
    assert response.status_code == 201, response.content
    assert len(await stored(session_id)) == 40


async def asgi_post(chunks: list[bytes], headers: list[tuple[bytes, bytes]]) -> tuple[int, dict]:
    """POST through Django's ASGI handler as a server would, with the body in chunks, no Content-Length."""
    messages = [{"type": "http.request", "body": chunk, "more_body": True} for chunk in chunks]
    messages.append({"type": "http.request", "body": b"", "more_body": False})
    sent: list[dict] = []

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # the client stays connected

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": URL,
        "raw_path": URL.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    await ASGIHandler()(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body)


async def test_a_chunked_body_without_content_length_is_read_up_to_the_limit(
    agent_token, session_id, settings
):
    settings.EVENTS_MAX_BODY_BYTES = 4_000
    headers = [(b"authorization", f"Bearer {agent_token}".encode()), (b"content-type", b"application/json")]
    small = json.dumps([switch(session_id, n) for n in range(3)]).encode()
    status, body = await asgi_post([small[:50], small[50:]], headers)
    assert status == 201, body
    assert len(body["positions"]) == 3

    large = json.dumps([switch(session_id, n) for n in range(100)]).encode()
    status, body = await asgi_post([large[i : i + 1000] for i in range(0, len(large), 1000)], headers)
    assert status == 413 and body["code"] == "payload_too_large"
    assert len(await stored(session_id)) == 3


async def test_a_store_failure_is_503_and_the_retry_succeeds(agent_token, session_id, monkeypatch):
    async def failing(events, wait_for_handlers=False):
        raise EventStoreError("the event store is unavailable: connection refused")

    events = [switch(session_id, n, event_id=str(uuid.uuid4())) for n in range(3)]
    with monkeypatch.context() as patch:
        patch.setattr(event_bus, "publish_many", failing)
        response = await post(events, agent_token)
    assert response.status_code == 503
    assert response.json()["code"] == "store_unavailable"
    assert response.headers["Retry-After"] == "1"
    retry = await post(events, agent_token)
    assert retry.status_code == 201
    assert len(await stored(session_id)) == 3


async def test_other_methods_are_405(agent_token):
    response = await AsyncClient().put(
        URL, "{}", content_type="application/json", headers={"Authorization": f"Bearer {agent_token}"}
    )
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"


# The schema


async def test_the_schema_and_docs_are_public_and_document_the_endpoint():
    client = AsyncClient()
    response = await client.get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    schema = json.loads(response.content)
    operation = schema["paths"]["/api/events/"]["post"]
    assert {"201", "400", "401", "403", "413", "415", "503"} <= set(operation["responses"])
    assert {"bearerAuth": []} in operation["security"]
    assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    docs = await client.get("/api/docs/")
    assert docs.status_code == 200 and b"swagger" in docs.content.lower()
