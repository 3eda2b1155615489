"""/ws/events/: who may connect, filters, resume with no gap and no duplicate, errors, slow clients."""

import asyncio
import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from accounts.services import api_token_issue
from eventbus_project.asgi import application
from events import consumers
from events.base import BaseEvent
from events.event_bus import event_bus
from events.event_store import event_store
from events.live import live_feed

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def auditor():
    return api_token_issue(username="ada", group="auditors").token


@pytest.fixture
def agent():
    return api_token_issue(username="bot", group="agents").token


def connect(query: str = "", headers: list | None = None, path: str = "/ws/events/"):
    return WebsocketCommunicator(application, f"{path}?{query}" if query else path, headers=headers or [])


async def publish(n: int, session_id: str = "s1", event_type: str = "message_added", **data) -> list[str]:
    ids = []
    for i in range(n):
        event = BaseEvent(event_type=event_type, session_id=session_id, data={"i": i, **data})
        ids.append(event.event_id)
        await event_bus.publish(event, wait_for_handlers=True)
    return ids


async def receive_until(ws, predicate, timeout: float = 5.0) -> list[dict]:
    """Messages until one satisfies `predicate` (included)."""
    seen = []
    while True:
        message = json.loads(await ws.receive_from(timeout))
        seen.append(message)
        if predicate(message):
            return seen


async def test_live_events_arrive_with_their_position(auditor):
    ws = connect(f"token={auditor}&session_id=s1")
    connected, _ = await ws.connect()
    assert connected
    first = json.loads(await ws.receive_from(5))
    assert first["type"] == "caught_up"
    ids = await publish(3)
    messages = [json.loads(await ws.receive_from(5)) for _ in range(3)]
    assert [m["type"] for m in messages] == ["event"] * 3
    assert [m["event"]["event_id"] for m in messages] == ids
    positions = [m["position"] for m in messages]
    assert positions == sorted(positions) and positions[0] > first["position"]
    assert all(m["event"]["position"] == m["position"] for m in messages)
    assert messages[0]["event"]["data"] == {"i": 0}
    await ws.disconnect()


async def test_filters_select_what_the_client_sees(auditor):
    ws = connect(f"token={auditor}&session_id=mine&event_type=message_added")
    await ws.connect()
    await ws.receive_from(5)  # caught_up
    await publish(2, session_id="other")
    await publish(1, session_id="mine", event_type="session_created")
    wanted = await publish(2, session_id="mine")
    messages = [json.loads(await ws.receive_from(5)) for _ in range(2)]
    assert [m["event"]["event_id"] for m in messages] == wanted
    assert await ws.receive_nothing(0.3)
    await ws.disconnect()


async def test_resume_after_a_position_has_no_gap_and_no_duplicate(auditor):
    await publish(5)
    rows = await event_store.get_events(session_id="s1", limit=100)
    after = rows[1].position
    ws = connect(f"token={auditor}&after={after}&session_id=s1")
    await ws.connect()

    # Events keep coming while the client catches up: the hand-over must neither skip nor repeat.
    async def more() -> list[str]:
        return await publish(20)

    late = asyncio.create_task(more())
    seen: list[dict] = await receive_until(ws, lambda m: m["type"] == "caught_up")
    late_ids = await late
    expected = [e.event_id for e in rows[2:]] + late_ids
    while len([m for m in seen if m["type"] == "event"]) < len(expected):
        seen.append(json.loads(await ws.receive_from(5)))
    events = [m for m in seen if m["type"] == "event"]
    assert [m["event"]["event_id"] for m in events] == expected
    positions = [m["position"] for m in events]
    assert positions == sorted(set(positions))
    assert await ws.receive_nothing(0.3)
    await ws.disconnect()


async def test_resume_action_replays_from_the_store(auditor):
    ids = await publish(4)
    ws = connect(f"token={auditor}&session_id=s1")
    await ws.connect()
    caught = json.loads(await ws.receive_from(5))
    rows = await event_store.get_events(session_id="s1", limit=100)
    await ws.send_to(text_data=json.dumps({"action": "resume", "after": rows[0].position}))
    seen = await receive_until(ws, lambda m: m["type"] == "caught_up")
    assert [m["event"]["event_id"] for m in seen if m["type"] == "event"] == ids[1:]
    assert seen[-1]["position"] >= caught["position"]
    await ws.disconnect()


async def test_bad_messages_get_an_error_and_the_connection_stays(auditor):
    ws = connect(f"token={auditor}&session_id=s1")
    await ws.connect()
    await ws.receive_from(5)
    for text, code in [
        ("not json", "invalid_json"),
        ("[1, 2]", "invalid_message"),
        ('{"action": "dance"}', "unknown_action"),
        ('{"action": "resume", "after": -1}', "invalid_message"),
        ('{"action": "resume", "after": "x"}', "invalid_message"),
        ("x" * 70_000, "invalid_message"),
    ]:
        await ws.send_to(text_data=text)
        reply = json.loads(await ws.receive_from(5))
        assert reply["type"] == "error" and reply["code"] == code, (text[:20], reply)
        assert reply["detail"]
    await ws.send_to(bytes_data=b"\x00\x01")
    assert json.loads(await ws.receive_from(5))["code"] == "invalid_message"
    await ws.send_to(text_data='{"action": "ping"}')
    assert json.loads(await ws.receive_from(5)) == {"type": "pong"}
    ids = await publish(1)
    assert json.loads(await ws.receive_from(5))["event"]["event_id"] == ids[0]
    await ws.disconnect()


@pytest.mark.parametrize(
    "query",
    ["after=-3", "after=abc", "event_category=nonsense", "colour=red", "session_id=" + "x" * 300],
)
async def test_a_bad_filter_is_named_and_closes(auditor, query):
    ws = connect(f"token={auditor}&{query}")
    await ws.connect()
    reply = json.loads(await ws.receive_from(5))
    assert reply["type"] == "error" and reply["code"] == "invalid_filter"
    assert query.split("=")[0] in reply["detail"]
    output = await ws.receive_output(5)
    assert output == {"type": "websocket.close", "code": 4400}


async def test_anonymous_and_unprivileged_are_refused(agent):
    for query, code, close in [
        ("", "not_authenticated", 4401),
        ("token=wrong", "not_authenticated", 4401),
        (f"token={agent}", "permission_denied", 4403),
    ]:
        ws = connect(query)
        connected, _ = await ws.connect()
        assert connected
        reply = json.loads(await ws.receive_from(5))
        assert reply["type"] == "error" and reply["code"] == code
        assert await ws.receive_output(5) == {"type": "websocket.close", "code": close}


async def test_a_bearer_header_authenticates_too(auditor):
    ws = connect(headers=[(b"authorization", f"Bearer {auditor}".encode())])
    await ws.connect()
    assert json.loads(await ws.receive_from(5))["type"] == "caught_up"
    await ws.disconnect()


async def test_a_foreign_origin_is_refused_at_the_handshake(auditor):
    ws = connect(f"token={auditor}", headers=[(b"origin", b"http://evil.example")])
    connected, code = await ws.connect()
    assert not connected


@database_sync_to_async
def _session_cookie(username: str, group: str) -> bytes:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.test import Client

    from accounts.services import roles_setup

    roles_setup()
    user = get_user_model().objects.create_user(username, password="pw-12345-xyz")
    user.groups.add(Group.objects.get(name=group))
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def test_a_browser_session_needs_its_own_origin():
    cookie = await _session_cookie("carol", "auditors")
    ws = connect(
        headers=[(b"cookie", cookie), (b"origin", b"http://127.0.0.1:8000"), (b"host", b"127.0.0.1:8000")]
    )
    connected, _ = await ws.connect()
    assert connected
    assert json.loads(await ws.receive_from(5))["type"] == "caught_up"
    await ws.disconnect()
    # The same cookie without an Origin (not a browser on this site) authenticates nobody.
    ws = connect(headers=[(b"cookie", cookie)])
    await ws.connect()
    assert json.loads(await ws.receive_from(5))["code"] == "not_authenticated"


async def test_a_slow_client_gets_a_gap_and_resumes_from_it(auditor, monkeypatch):
    # The client stops reading: the consumer holds its writes, so its bounded queue overflows.
    stalled = True
    monkeypatch.setattr(consumers, "transport_backlog", lambda send: 10**9 if stalled else 0)
    ws = connect(f"token={auditor}&session_id=s1")
    await ws.connect()
    caught = json.loads(await ws.receive_from(5))
    listener = next(iter(live_feed._listeners))
    listener.queue_size = 5
    overflows = live_feed.get_stats()["overflows"]
    ids = await publish(12)
    for _ in range(50):
        if listener.overflowed:
            break
        await asyncio.sleep(0.05)
    assert listener.overflowed
    assert len(listener.queue) == 0  # what it held is let go: memory stays bounded
    assert live_feed.get_stats()["overflows"] == overflows + 1  # and operators can see it (/metrics)
    stalled = False
    gap = await receive_until(ws, lambda m: m["type"] == "gap")
    sent = [m["event"]["event_id"] for m in gap if m["type"] == "event"]
    assert gap[-1]["after"] == (gap[-2]["position"] if len(gap) > 1 else caught["position"])
    assert len(live_feed) == 0  # detached: nothing more is queued for it
    await ws.send_to(text_data=json.dumps({"action": "resume", "after": gap[-1]["after"]}))
    rest = await receive_until(ws, lambda m: m["type"] == "caught_up")
    assert sent + [m["event"]["event_id"] for m in rest if m["type"] == "event"] == ids
    await ws.disconnect()


async def test_signing_out_closes_the_browser_sockets():
    from events.consumers import install_socket_closer
    from events.system_events import OperatorSignedOutEvent

    install_socket_closer(event_bus)
    cookie = await _session_cookie("dora", "auditors")
    ws = connect(
        headers=[(b"cookie", cookie), (b"origin", b"http://127.0.0.1:8000"), (b"host", b"127.0.0.1:8000")]
    )
    await ws.connect()
    await ws.receive_from(5)
    await event_bus.publish(OperatorSignedOutEvent(username="dora"), wait_for_handlers=True)
    reply = json.loads(await ws.receive_from(5))
    assert reply["code"] == "not_authenticated"
    assert await ws.receive_output(5) == {"type": "websocket.close", "code": 4401}
