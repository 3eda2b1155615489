"""/ws/hitl/ presence: who else has a request open, live, forgotten when their socket closes."""

import asyncio
import json

import pytest
from channels.testing import WebsocketCommunicator

from accounts.services import api_token_issue
from eventbus_project.asgi import application
from hitl import presence
from hitl.presence import PresenceBoard

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def empty_board():
    presence.board.clear()
    yield
    presence.board.clear()


@pytest.fixture
def people():
    return {name: api_token_issue(username=name, group="operators") for name in ("olga", "pete")}


async def open_queue(token: str) -> WebsocketCommunicator:
    ws = WebsocketCommunicator(application, f"/ws/hitl/?token={token}")
    connected, _ = await ws.connect()
    assert connected
    assert json.loads(await ws.receive_from(5))["type"] in ("snapshot", "presence")
    return ws


async def presence_of(ws: WebsocketCommunicator, call_id: str, timeout: float = 5.0) -> list[str]:
    """The viewers of the next presence message about call_id (other messages skipped)."""
    while True:
        message = json.loads(await ws.receive_from(timeout))
        if message["type"] == "presence" and message["call_id"] == call_id:
            return list(message["viewers"])


async def test_a_viewer_is_shown_to_others_live_and_forgotten_when_the_socket_closes(people):
    olga = await open_queue(people["olga"].token)
    pete = await open_queue(people["pete"].token)

    await pete.send_json_to({"action": "viewing", "call_ids": ["c-1"]})
    assert await presence_of(olga, "c-1") == ["pete"]
    assert await presence_of(pete, "c-1") == ["pete"]  # the page leaves its own name out

    await olga.send_json_to({"action": "viewing", "call_ids": ["c-1", "c-2"]})
    assert await presence_of(pete, "c-1") == ["olga", "pete"]
    assert await presence_of(pete, "c-2") == ["olga"]
    assert await presence_of(olga, "c-1") == ["olga", "pete"]

    # Pete moves to another request: c-1 loses him.
    await pete.send_json_to({"action": "viewing", "call_ids": ["c-3"]})
    assert await presence_of(olga, "c-1") == ["olga"]

    # A third connection hears at once who has what open.
    late = WebsocketCommunicator(application, f"/ws/hitl/?token={people['olga'].token}")
    assert (await late.connect())[0]
    seen = {}
    while len(seen) < 3:  # the snapshot and the presence messages come in either order
        message = json.loads(await late.receive_from(5))
        if message["type"] == "presence":
            seen[message["call_id"]] = message["viewers"]
    assert seen == {"c-1": ["olga"], "c-2": ["olga"], "c-3": ["pete"]}
    await late.disconnect()

    await pete.disconnect()
    assert await presence_of(olga, "c-3") == ["pete"]  # told when pete moved there
    assert await presence_of(olga, "c-3") == []
    await olga.disconnect()
    assert presence.board.watched() == []


async def test_a_bad_viewing_frame_gets_an_error_naming_the_field_and_the_socket_stays_open(people):
    ws = await open_queue(people["olga"].token)
    for frame, field in (
        ({"action": "viewing"}, "call_ids"),
        ({"action": "viewing", "call_ids": "c-1"}, "call_ids"),
        ({"action": "viewing", "call_ids": [1]}, "call_ids[0]"),
        ({"action": "viewing", "call_ids": [f"c-{i}" for i in range(presence.MAX_VIEWING + 1)]}, "call_ids"),
    ):
        await ws.send_json_to(frame)
        message = json.loads(await ws.receive_from(5))
        while message["type"] != "error":
            message = json.loads(await ws.receive_from(5))
        assert message["code"] == "invalid" and message["errors"][0]["field"] == field, message
    await ws.send_json_to({"action": "ping"})
    message = json.loads(await ws.receive_from(5))
    while message["type"] != "pong":
        message = json.loads(await ws.receive_from(5))
    await ws.disconnect()


async def test_a_silent_viewer_is_forgotten_after_it_goes_stale(people, monkeypatch):
    monkeypatch.setattr(presence, "REFRESH_S", 0.1)
    olga = await open_queue(people["olga"].token)
    # A report from another process that then died (it never says it left).
    presence.board.apply(key="gone-process", username="zed", call_ids=["c-9"], seq=1, now=0.0)
    await olga.send_json_to({"action": "viewing", "call_ids": ["c-9"]})
    assert await presence_of(olga, "c-9") == ["olga", "zed"]
    assert await presence_of(olga, "c-9") == ["olga"]  # pruned by the refresh
    await olga.disconnect()


def test_the_board_keeps_the_latest_report_forgets_the_stale_and_stays_bounded():
    board = PresenceBoard(max_entries=3, stale_s=10)
    assert board.apply(key="a", username="olga", call_ids=["c1"], seq=2, now=0) == {"c1"}
    assert board.apply(key="a", username="olga", call_ids=["c2"], seq=1, now=1) == set()  # older: ignored
    assert board.viewers("c1") == ["olga"]
    assert board.apply(key="a", username="olga", call_ids=["c2"], seq=3, now=1) == {"c1", "c2"}
    assert board.viewers("c1") == [] and board.viewers("c2") == ["olga"]
    board.apply(key="b", username="pete", call_ids=["c2"], seq=1, now=5)
    board.apply(key="c", username="pete", call_ids=["c2"], seq=1, now=6)  # pete in two tabs: named once
    assert board.viewers("c2") == ["olga", "pete"]
    board.apply(key="d", username="rita", call_ids=["c3"], seq=1, now=7)  # a fourth: the stalest (a) goes
    assert sorted(board.reports) == ["b", "c", "d"]
    assert board.viewers("c2") == ["pete"]
    assert board.prune(now=16) == {"c2"}  # b went stale (seen at 5)
    assert sorted(board.reports) == ["c", "d"]


async def test_presence_waits_out_a_broken_channel_layer_while_the_queue_carries_on(people, monkeypatch):
    class Broken:
        async def new_channel(self):
            raise ConnectionError("redis is away")

        async def group_send(self, group, message):
            raise ConnectionError("redis is away")

        async def group_discard(self, group, channel):
            raise ConnectionError("redis is away")

    monkeypatch.setattr("hitl.consumers.get_channel_layer", lambda: Broken())
    olga = await open_queue(people["olga"].token)
    await olga.send_json_to({"action": "viewing", "call_ids": ["c-5"]})
    assert await presence_of(olga, "c-5") == ["olga"]  # this process still knows
    await olga.send_json_to({"action": "ping"})
    message = json.loads(await olga.receive_from(5))
    while message["type"] != "pong":
        message = json.loads(await olga.receive_from(5))
    await asyncio.wait_for(olga.disconnect(), 10)
