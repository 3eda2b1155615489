"""POST /api/hitl/requests/ with a Bearer token is answered beside Django's request cycle
(hitl.fast_request), with the same statuses and JSON bodies as the DRF view for every input."""

import json
import uuid
from typing import Any

import httpx
import pytest
from channels.db import database_sync_to_async
from django.db import OperationalError
from django.test import AsyncClient

from accounts.services import api_token_issue
from audit.models import AuditEntry
from eventbus_project.asgi import application
from events.models import StoredEvent
from hitl import api as hitl_api
from hitl import fast_request
from hitl.fast_request import wants_fast_path
from hitl.models import ApprovalRequest
from hitl.policies import rule_create
from ops.metrics import request_latencies

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/api/hitl/requests/"
# What differs between two requests made one after the other (the call_id is each test's own).
MOMENTS = {"call_id", "created_at", "decided_at", "expires_at"}


@pytest.fixture
def tokens() -> dict[str, str]:
    operator = api_token_issue(username="fast-operator", group="operators")
    rule_create(data={"name": "approve-reads", "tool": "read_*", "action": "approve"}, user=operator.user)
    return {
        "agent": api_token_issue(username="fast-agent", group="agents").token,
        "other_agent": api_token_issue(username="fast-agent-2", group="agents").token,
        "operator": operator.token,
        "nobody": api_token_issue(username="fast-nobody").token,
    }


def asking(call_id: str, tool_name: str = "write_file", **extra) -> dict:
    return {
        "session_id": "s-1",
        "call_id": call_id,
        "tool_name": tool_name,
        "arguments": {"path": "/tmp/x"},
        "agent": "coder",
        **extra,
    }


def bearer(token: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


@pytest.fixture(autouse=True)
def fast_answers(monkeypatch) -> list[str]:
    """The tokens the fast path authenticated: a test sees that it, not Django, answered."""
    seen: list[str] = []
    original = fast_request.authenticate_token

    def spy(raw_token: str):
        seen.append(raw_token)
        return original(raw_token)

    monkeypatch.setattr(fast_request, "authenticate_token", spy)
    return seen


async def through_asgi(body: bytes, headers: dict[str, str]) -> httpx.Response:
    """Through the project's ASGI application, as Daphne serves it (the fast path where it applies)."""
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        return await client.post(URL, content=body, headers=headers)


async def through_django(body: bytes, headers: dict[str, str]):
    content_type = headers.pop("Content-Type", "application/json")
    return await AsyncClient().post(URL, body, content_type=content_type, headers=headers)


async def both(body: bytes, token: str | None, fast_answers: list[str]) -> tuple[httpx.Response, Any]:
    """The answers of the fast path and of the DRF view to the same request."""
    answered = len(fast_answers)
    fast = await through_asgi(body, bearer(token))
    assert len(fast_answers) == answered + (token is not None)  # with a token, the fast path answered
    slow = await through_django(body, bearer(token))
    assert len(fast_answers) == answered + (token is not None)  # and the view, not the fast path
    return fast, slow


def same_error(fast, slow, status: int, code: str) -> None:
    assert fast.status_code == slow.status_code == status, (fast.content[:300], slow.content[:300])
    assert fast.json() == slow.json()
    assert fast.json()["code"] == code


def test_the_fast_path_takes_the_agents_plain_requests_only():
    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"authorization", b"Bearer t"),
        (b"content-type", b"application/json"),
    ]
    base = {
        "type": "http",
        "method": "POST",
        "path": URL,
        "query_string": b"",
        "headers": [*headers, (b"content-length", b"2")],
    }
    assert wants_fast_path(base) == "t"
    assert wants_fast_path({**base, "headers": [*base["headers"], (b"accept", b"*/*")]}) == "t"
    for changed in (
        {"method": "GET"},
        {"path": "/api/hitl/requests/c-1/"},
        {"query_string": b"x=1"},
        {"headers": [*headers[:1], (b"content-type", b"application/json"), (b"content-length", b"2")]},
        {"headers": [(b"host", b"evil.example"), *headers[1:], (b"content-length", b"2")]},  # a 400
        {"headers": [*headers[1:], (b"content-length", b"2")]},  # no Host to check
        {"headers": [*headers]},  # no length: DRF reads no body
        {"headers": [*headers, (b"content-length", b"0")]},
        {"headers": [*headers, (b"content-length", b"99999999")]},  # a 413: Django's
        {"headers": [*headers[:2], (b"content-type", b"text/plain"), (b"content-length", b"2")]},  # a 415
        {"headers": [*base["headers"], (b"accept", b"text/html")]},  # a 406
    ):
        assert wants_fast_path({**base, **changed}) is None, changed


async def test_a_new_request_is_201_as_from_the_view(tokens, fast_answers):
    fast = await through_asgi(json.dumps(asking("fast-new")).encode(), bearer(tokens["agent"]))
    slow = await through_django(json.dumps(asking("slow-new")).encode(), bearer(tokens["agent"]))
    assert fast_answers == [tokens["agent"]]
    assert fast.status_code == slow.status_code == 201
    fast_body, slow_body = fast.json(), slow.json()
    assert set(fast_body) == set(slow_body)
    assert {k: v for k, v in fast_body.items() if k not in MOMENTS} == {
        k: v for k, v in slow_body.items() if k not in MOMENTS
    }
    assert fast_body["call_id"] == "fast-new" and fast_body["status"] == "pending"


async def test_a_request_a_rule_decides_is_answered_decided_and_committed_with_its_records(tokens):
    response = await through_asgi(
        json.dumps(asking("fast-read", tool_name="read_file")).encode(), bearer(tokens["agent"])
    )
    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "approved" and body["channel"] == "policy" and body["rule"] == "approve-reads@1"

    def records() -> tuple[str, set[str], set[str]]:
        row = ApprovalRequest.objects.get(call_id="fast-read")
        stored = {
            e.event_type for e in StoredEvent.objects.all() if (e.data or {}).get("call_id") == "fast-read"
        }
        audited = {
            a.event_type for a in AuditEntry.objects.all() if (a.data or {}).get("call_id") == "fast-read"
        }
        return row.status, stored, audited

    status, stored, audited = await database_sync_to_async(records)()
    assert status == "approved"
    assert stored == audited == {"tool_approval_required", "hitl_decision_made"}


async def test_the_same_call_again_is_the_same_200_from_both(tokens, fast_answers):
    body = json.dumps(asking("again")).encode()
    first = await through_asgi(body, bearer(tokens["agent"]))
    assert first.status_code == 201
    fast, slow = await both(body, tokens["agent"], fast_answers)
    assert fast.status_code == slow.status_code == 200
    assert fast.json() == slow.json() == first.json()


async def test_a_call_id_used_for_another_call_is_the_same_409(tokens, fast_answers):
    first = await through_asgi(json.dumps(asking("taken")).encode(), bearer(tokens["agent"]))
    assert first.status_code == 201
    other_arguments = json.dumps(asking("taken", arguments={"path": "/etc/passwd"})).encode()
    fast, slow = await both(other_arguments, tokens["agent"], fast_answers)
    same_error(fast, slow, 409, "call_id_conflict")
    fast, slow = await both(json.dumps(asking("taken")).encode(), tokens["other_agent"], fast_answers)
    same_error(fast, slow, 409, "call_id_conflict")  # another agent's call_id


@pytest.mark.parametrize(
    "body, code",
    [
        (b"{nope", "invalid"),
        (b'{"call_id": "a", "call_id": "b"}', "invalid"),  # a key given twice
        (b"[]", "invalid"),  # not an object
        (b'"text"', "invalid"),
        (("[" * 5000 + "]" * 5000).encode(), "invalid"),
        (json.dumps({"session_id": "s", "call_id": "no-tool"}).encode(), "invalid"),
        (json.dumps(asking("a/b")).encode(), "invalid"),
        (json.dumps(asking("bad-args", arguments="ls")).encode(), "invalid"),
        (json.dumps(asking("bad-timeout", timeout_s=-1)).encode(), "invalid"),
        (json.dumps(asking("nul\u0000")).encode(), "invalid"),
        (json.dumps(asking("bad-cause", causation_id="not-an-id")).encode(), "invalid"),
        (json.dumps(asking("number-cause", causation_id=5)).encode(), "invalid"),
    ],
    ids=[
        "not JSON",
        "key twice",
        "a list",
        "a string",
        "deep",
        "missing",
        "slash",
        "args",
        "timeout",
        "NUL",
        "causation",
        "causation number",
    ],
)
async def test_bad_bodies_are_the_same_400(tokens, fast_answers, body, code):
    fast, slow = await both(body, tokens["agent"], fast_answers)
    same_error(fast, slow, 400, code)


async def test_a_malformed_causation_id_is_a_400_naming_it_from_both(tokens, fast_answers):
    fast, slow = await both(
        json.dumps(asking("cause-x", causation_id="12345")).encode(), tokens["agent"], fast_answers
    )
    same_error(fast, slow, 400, "invalid")
    assert [error["field"] for error in fast.json()["errors"]] == ["causation_id"]


async def test_a_causation_id_is_the_cause_of_the_stored_request_from_both(tokens, fast_answers):
    cause = uuid.uuid4()
    for call_id, send in (("cause-fast", through_asgi), ("cause-slow", through_django)):
        body = json.dumps(asking(call_id, causation_id=str(cause).upper())).encode()
        response = await send(body, bearer(tokens["agent"]))
        assert response.status_code == 201, response.content[:300]

    def causes() -> dict[str, str | None]:
        return {
            e.data["call_id"]: e.causation_id
            for e in StoredEvent.objects.filter(event_type="tool_approval_required")
        }

    assert await database_sync_to_async(causes)() == {"cause-fast": str(cause), "cause-slow": str(cause)}


async def test_permissions_are_the_same_403_whatever_the_body(tokens, fast_answers):
    for token in (tokens["operator"], tokens["nobody"]):
        for body in (json.dumps(asking("refused")).encode(), b"{nope"):
            fast, slow = await both(body, token, fast_answers)
            same_error(fast, slow, 403, "permission_denied")
    assert not await database_sync_to_async(ApprovalRequest.objects.filter(call_id="refused").exists)()


async def test_no_token_or_a_bad_one_is_the_same_401(tokens, fast_answers):
    body = json.dumps(asking("anonymous")).encode()
    fast, slow = await both(body, None, fast_answers)  # no token: Django answers both
    same_error(fast, slow, 401, "not_authenticated")
    fast, slow = await both(body, "not-a-token", fast_answers)  # a token: the fast path answers
    same_error(fast, slow, 401, "invalid_token")
    assert fast.headers["www-authenticate"] == 'Bearer realm="api"'


async def test_an_unreachable_database_is_the_same_503(tokens, fast_answers, monkeypatch):
    def unreachable(**kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(hitl_api, "approval_request", unreachable)  # both paths call it from hitl.api
    fast, slow = await both(json.dumps(asking("away")).encode(), tokens["agent"], fast_answers)
    same_error(fast, slow, 503, "store_unavailable")
    assert fast.headers["retry-after"] == slow.headers["retry-after"]


async def test_a_host_django_refuses_is_its_400(tokens, fast_answers):
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://evil.example") as client:
        response = await client.post(
            URL, content=json.dumps(asking("evil")).encode(), headers=bearer(tokens["agent"])
        )
    assert response.status_code == 400 and fast_answers == []


async def test_the_answer_is_counted_in_the_latency_histogram(tokens):
    def count(family) -> float:
        return sum(
            value
            for suffix, labels, value in family.samples
            if suffix == "_count"
            and dict(labels).get("view") == "hitl-requests"
            and dict(labels).get("method") == "POST"
            and dict(labels).get("status") == "2xx"
        )

    before = count(request_latencies.family())
    response = await through_asgi(
        json.dumps(asking(f"counted-{uuid.uuid4()}")).encode(), bearer(tokens["agent"])
    )
    assert response.status_code == 201
    assert count(request_latencies.family()) == before + 1
