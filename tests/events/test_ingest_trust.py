"""POST /api/events/ at the trust boundary: types the server makes stay the server's, the JSON entrance
refuses what the store could not keep, and a list is stored all or nothing."""

import json
import uuid

import pytest
from channels.db import database_sync_to_async
from django.test import AsyncClient

from accounts.services import api_token_issue
from events.event_store import event_store
from events.models import StoredEvent

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/api/events/"


@pytest.fixture
def agent_token() -> str:
    return api_token_issue(username="agent-trust", group="agents").token


@pytest.fixture
def session_id() -> str:
    return f"trust-{uuid.uuid4()}"


def step(session_id: str, **data) -> dict:
    return {
        "event_type": "message_added",
        "session_id": session_id,
        "data": {"role": "assistant", "content": "x", **data},
    }


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth - 1):
        value = {"x": value}
    return value


async def post(body, token: str):
    return await AsyncClient().post(
        URL, json.dumps(body), content_type="application/json", headers={"Authorization": f"Bearer {token}"}
    )


@database_sync_to_async
def stored(session_id: str) -> list[str]:
    return list(
        StoredEvent.objects.filter(session_id=session_id)
        .order_by("position")
        .values_list("event_type", flat=True)
    )


@pytest.mark.parametrize(
    "event_type",
    [
        "tool_approval_cancelled",
        "tool_approval_required",
        "tool_approval_expiring",
        "hitl_decision_made",
        "operator_locked_out",
        "operator_anything_new",
        "model_changed",
        "audit_purged",
    ],
)
async def test_every_type_of_the_approval_lifecycle_and_of_operators_is_the_servers(
    agent_token, session_id, event_type
):
    body = [
        step(session_id),
        {"event_type": event_type, "session_id": session_id, "source": "hitl", "data": {}},
    ]
    response = await post(body, agent_token)
    assert response.status_code == 403, response.content
    assert response.json()["code"] == "reserved_event_type"
    assert await stored(session_id) == []


@pytest.mark.parametrize(
    "event_type",
    [
        "hitl_decision_made ",
        "HITL_DECISION_MADE",
        "Tool_approval_cancelled",
        "hitl_decision_made\n",
        "a" * 101,
        "1abc",
        "with space",
        "hitl-decision",
        "é",
    ],
)
async def test_a_look_alike_spelling_is_not_a_type(agent_token, session_id, event_type):
    response = await post(
        [step(session_id), {"event_type": event_type, "session_id": session_id}], agent_token
    )
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["code"] == "invalid_event_type" and body["errors"][0]["index"] == 1
    assert await stored(session_id) == []


async def test_dotted_and_numbered_types_are_accepted(agent_token, session_id):
    response = await post(
        {"event_type": "gen_ai.chat2", "event_category": "agent", "session_id": session_id}, agent_token
    )
    assert response.status_code == 201, response.content


@pytest.mark.parametrize("depth", [65, 900, 5000])
async def test_a_list_with_one_deep_event_is_refused_whole_with_a_400(agent_token, session_id, depth):
    deep = '{"x":' * (depth - 1) + "{}" + "}" * (depth - 1)  # too deep for json.dumps to write
    first = json.dumps(step(session_id))
    second = json.dumps(step(session_id, deep="DEEP")).replace('"DEEP"', deep)
    body = f"[{first},{second}]"

    async def post(text, token):
        return await AsyncClient().post(
            URL, text, content_type="application/json", headers={"Authorization": f"Bearer {token}"}
        )

    response = await post(body, agent_token)
    assert response.status_code == 400, response.content[:300]
    assert response.json()["code"] in ("invalid_event", "invalid")
    assert await stored(session_id) == []
    # A permanent error stays one: the same body again is the same 400, not a 503 to retry forever.
    assert (await post(body, agent_token)).status_code == 400


async def test_sixty_four_levels_are_accepted(agent_token, session_id):
    response = await post(step(session_id, deep=nested(60)), agent_token)
    assert response.status_code == 201, response.content[:300]


@pytest.mark.parametrize("text", ["a\x00b", "\ud800"])
async def test_a_nul_or_a_lone_surrogate_in_a_key_or_a_value_is_a_400_naming_it(
    agent_token, session_id, text
):
    for data in ({"note": text}, {text: "x"}, {"list": [1, {"deeper": text}]}):
        raw = json.dumps([step(session_id), step(session_id, **data)])  # ensure_ascii: \\ud800 escapes
        response = await AsyncClient().post(
            URL, raw, content_type="application/json", headers={"Authorization": f"Bearer {agent_token}"}
        )
        assert response.status_code == 400, response.content
        assert response.json()["errors"][0]["index"] == 1
    assert await stored(session_id) == []


async def test_a_list_the_database_refuses_in_part_is_stored_not_at_all(agent_token, session_id):
    """All or nothing even past the entrance: when the database refuses one event of a list, none of the
    list is stored, the answer is a 400 (not a 503 to retry), and other requests are not held up."""

    def refuse_poison(cursor, events):
        if any(event.data.get("poison") for event in events):
            raise ValueError("refused by a test hook")

    event_store.add_batch_hook(refuse_poison)
    try:
        body = [
            step(session_id, n=1),
            step(session_id, n=2),
            step(session_id, poison=True),
            step(session_id, n=4),
        ]
        response = await post(body, agent_token)
        assert response.status_code == 400, response.content
        assert response.json()["code"] == "invalid_event"
        assert await stored(session_id) == []
        fine = await post([step(session_id, n=5), step(session_id, n=6)], agent_token)
        assert fine.status_code == 201
        assert await stored(session_id) == ["message_added", "message_added"]
    finally:
        event_store._hooks.remove(refuse_poison)
