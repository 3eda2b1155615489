"""POST /api/events/ with a Bearer token is answered beside Django's request cycle (events.fast_ingest),
with the same answers as the DRF view for every input, good or bad."""

import json
import uuid

import httpx
import pytest
from channels.db import database_sync_to_async
from django.test import AsyncClient

from accounts.services import api_token_issue
from eventbus_project.asgi import application
from events.fast_ingest import wants_fast_path
from events.models import StoredEvent
from ops.metrics import request_latencies

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/api/events/"


@pytest.fixture
def agent_token() -> str:
    return api_token_issue(username="fast-agent", group="agents").token


@pytest.fixture
def operator_token() -> str:
    return api_token_issue(username="fast-operator", group="operators").token


def step(session: str, **data) -> dict:
    return {
        "event_type": "message_added",
        "session_id": session,
        "data": {"role": "assistant", "content": "hi", **data},
    }


async def through_asgi(body: bytes, headers: dict[str, str]) -> httpx.Response:
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        return await client.post(URL, content=body, headers=headers)


async def through_django(body: bytes, headers: dict[str, str]):
    content_type = headers.pop("Content-Type", "application/json")
    return await AsyncClient().post(URL, body, content_type=content_type, headers=headers)


def deep(depth: int) -> str:
    return '{"x":' * depth + "1" + "}" * depth


CASES = {
    "one event": lambda s: json.dumps(step(s)).encode(),
    "a list": lambda s: json.dumps([step(s), step(s)]).encode(),
    "not JSON": lambda s: b"{nope",
    "deep": lambda s: json.dumps(step(s, deep="D")).replace('"D"', deep(90)).encode(),
    "very deep": lambda s: ("[" * 5000 + "]" * 5000).encode(),
    "a server-only type": lambda s: json.dumps({"event_type": "hitl_decision_made", "data": {}}).encode(),
    "a look-alike type": lambda s: json.dumps({"event_type": "HITL_DECISION_MADE", "data": {}}).encode(),
    "a lone surrogate": lambda s: json.dumps(step(s, note="\ud800")).encode(),
    "an empty list": lambda s: b"[]",
    "a number": lambda s: b"5",
}


@pytest.mark.parametrize("case", CASES)
async def test_the_fast_path_answers_as_the_drf_view_does(agent_token, case):
    session = f"fast-{uuid.uuid4()}"
    body = CASES[case](session)
    headers = {"Authorization": f"Bearer {agent_token}", "Content-Type": "application/json"}
    assert wants_fast_path(
        {
            "type": "http",
            "method": "POST",
            "path": URL,
            "query_string": b"",
            "headers": [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {agent_token}".encode())],
        }
    )
    fast = await through_asgi(body, dict(headers))
    slow = await through_django(body, dict(headers))
    assert fast.status_code == slow.status_code, (fast.content[:300], slow.content[:300])
    fast_body, slow_body = fast.json(), slow.json()
    if fast.status_code == 201:
        assert set(fast_body) == set(slow_body)
        assert all(isinstance(position, int) for position in fast_body["positions"])
    else:
        assert fast_body["code"] == slow_body["code"]
        assert fast_body["detail"] == slow_body["detail"]


@pytest.mark.parametrize(
    "headers, status",
    [
        ({"Authorization": "Bearer not-a-token"}, 401),
        ({"Content-Type": "text/plain"}, 415),
    ],
)
async def test_bad_credentials_and_media_types_are_the_views_errors(agent_token, headers, status):
    sent = {"Authorization": f"Bearer {agent_token}", "Content-Type": "application/json", **headers}
    body = json.dumps(step("s")).encode()
    fast = await through_asgi(body, dict(sent))
    slow = await through_django(body, dict(sent))
    assert fast.status_code == slow.status_code == status
    assert fast.json()["code"] == slow.json()["code"]


async def test_a_token_without_the_publish_permission_is_a_403(operator_token):
    headers = {"Authorization": f"Bearer {operator_token}", "Content-Type": "application/json"}
    response = await through_asgi(json.dumps(step("s")).encode(), headers)
    assert response.status_code == 403 and response.json()["code"] == "permission_denied"


async def test_an_oversized_body_is_a_413_before_anything_is_read(agent_token, settings):
    settings.EVENTS_MAX_BODY_BYTES = 100
    headers = {"Authorization": f"Bearer {agent_token}", "Content-Type": "application/json"}
    response = await through_asgi(json.dumps([step("s")] * 10).encode(), headers)
    assert response.status_code == 413 and response.json()["code"] == "payload_too_large"


async def test_the_event_is_stored_with_who_sent_it_and_counted_in_the_latency_histogram(agent_token):
    session = f"fast-{uuid.uuid4()}"
    before = request_latencies.family()
    headers = {"Authorization": f"Bearer {agent_token}", "Content-Type": "application/json"}
    response = await through_asgi(json.dumps(step(session)).encode(), headers)
    assert response.status_code == 201
    row = await database_sync_to_async(StoredEvent.objects.get)(session_id=session)
    assert row.position == response.json()["position"] and row.actor == "fast-agent"
    counts = {
        dict(labels).get("view"): value
        for suffix, labels, value in request_latencies.family().samples
        if suffix == "_count" and dict(labels).get("status") == "2xx" and dict(labels).get("method") == "POST"
    }
    earlier = {
        dict(labels).get("view"): value
        for suffix, labels, value in before.samples
        if suffix == "_count" and dict(labels).get("status") == "2xx" and dict(labels).get("method") == "POST"
    }
    assert counts.get("events", 0) == earlier.get("events", 0) + 1


async def test_a_host_django_refuses_is_its_400(agent_token):
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://evil.example") as client:
        response = await client.post(
            URL, content=json.dumps(step("evil")).encode(), headers={"Authorization": f"Bearer {agent_token}"}
        )
    assert response.status_code == 400
    assert not await StoredEvent.objects.filter(session_id="evil").aexists()


def test_what_the_fast_path_leaves_to_django():
    bearer = [(b"host", b"127.0.0.1"), (b"authorization", b"Bearer t")]
    base = {"type": "http", "method": "POST", "path": URL, "query_string": b"", "headers": bearer}
    assert wants_fast_path(base) == "t"
    # A Host outside ALLOWED_HOSTS, or none, is Django's to refuse with its 400.
    assert wants_fast_path({**base, "headers": [(b"host", b"evil.example"), bearer[1]]}) is None
    assert wants_fast_path({**base, "headers": bearer[1:]}) is None
    assert wants_fast_path({**base, "method": "GET"}) is None
    assert wants_fast_path({**base, "query_string": b"x=1"}) is None
    assert wants_fast_path({**base, "headers": [(b"cookie", b"sessionid=x")]}) is None  # no Bearer
    assert wants_fast_path({**base, "path": "/api/events/x/"}) is None
