"""/ws/hitl/ takes a request's state from its row, never from an event's type or data (issue 10, item 1).

An event in the approval lifecycle's name is published here directly on the bus (so it is stored and
reaches the live feed), bypassing the API's reserved-type check: even an event that an agent could once
post must not change what operators see. And every decide frame is checked like any JSON entrance: a bad
one gets an error frame, and the socket stays open.
"""

import json
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client
from django.utils import timezone

from accounts.services import api_token_issue
from eventbus_project.asgi import application
from events.base import BaseEvent
from events.event_bus import event_bus
from events.tool_events import HITLDecisionMadeEvent, ToolApprovalCancelledEvent
from hitl.consumers import check_decide, message_for
from hitl.models import ApprovalRequest
from hitl.services import approval_cancel, approval_decide, approval_expire, approval_request

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE_TYPES = ("snapshot", "request", "decision", "expired")


@pytest.fixture
def operator():
    return api_token_issue(username="olga", group="operators")


@pytest.fixture
def agent():
    return api_token_issue(username="bot", group="agents")


@pytest.fixture
def mallory():
    """Another agent: it knows the victim's call_id (say, from a shared trace) but not its request."""
    return api_token_issue(username="mallory", group="agents")


@database_sync_to_async
def ask(call_id: str, user, **extra) -> None:
    approval_request(
        call_id=call_id,
        session_id="s1",
        tool_name="send_email",
        arguments={"to": "a@example.com"},
        reason="wants to mail",
        agent="mailer",
        requested_by=user,
        **extra,
    )


@database_sync_to_async
def status_of(call_id: str) -> str:
    return ApprovalRequest.objects.get(call_id=call_id).status


async def open_queue(token: str) -> tuple[WebsocketCommunicator, dict]:
    ws = WebsocketCommunicator(application, f"/ws/hitl/?token={token}")
    connected, _ = await ws.connect()
    assert connected
    snapshot = json.loads(await ws.receive_from(5))
    assert snapshot["type"] == "snapshot"
    return ws, snapshot


async def until_request(ws, call_id: str, timeout: float = 5.0) -> list[dict]:
    """Every queue message up to and including the `request` of `call_id` (a marker asked afterwards:
    the live feed hands events over in position order, so whatever an earlier event produced came first)."""
    seen = []
    while True:
        message = json.loads(await ws.receive_from(timeout))
        seen.append(message)
        if message["type"] == "request" and message.get("call_id") == call_id:
            return seen


async def next_of(ws, kind: str, call_id: str, timeout: float = 5.0) -> dict:
    while True:
        message = json.loads(await ws.receive_from(timeout))
        if message["type"] == kind and message.get("call_id") == call_id:
            return message


async def reply_to_me(ws, timeout: float = 5.0) -> dict:
    """The next message that answers what this client sent (queue updates may come in between)."""
    while True:
        message = json.loads(await ws.receive_from(timeout))
        if message["type"] not in QUEUE_TYPES:
            return message


async def still_open(ws) -> None:
    await ws.send_to(text_data='{"action": "ping"}')
    assert await reply_to_me(ws) == {"type": "pong"}


def assert_nothing_removes(messages: list[dict], call_id: str) -> None:
    for message in messages:
        if message.get("call_id") != call_id:
            continue
        assert message["type"] == "request", message
        assert message["status"] == "pending", message


@database_sync_to_async
def shown_pending(operator_user, token: str, call_id: str) -> None:
    """What REST and the page show: the request, pending."""
    api = Client(headers={"Authorization": f"Bearer {token}"})
    response = api.get(f"/api/hitl/requests/{call_id}/")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "pending"
    listing = api.get("/api/hitl/requests/?status=pending")
    assert call_id in [r["call_id"] for r in listing.json()["results"]]
    page = Client()
    page.force_login(operator_user)
    html = page.get("/hitl/").content.decode()
    assert f'data-call-id="{call_id}"' in html


async def forge(event: BaseEvent) -> None:
    await event_bus.publish(event, wait_for_handlers=True)


# The queue: messages come from the rows


async def test_an_agent_posted_cancellation_does_not_remove_a_pending_request_from_the_queue(
    operator, agent, mallory
):
    await ask("c-victim", agent.user, on_expire="approve")
    ws, snapshot = await open_queue(operator.token)
    assert [r["call_id"] for r in snapshot["pending"]] == ["c-victim"]

    await forge(
        ToolApprovalCancelledEvent(session_id="s1", call_id="c-victim", tool_name="send_email", source="hitl")
    )
    await ask("c-marker", mallory.user)
    assert_nothing_removes(await until_request(ws, "c-marker"), "c-victim")

    assert await status_of("c-victim") == "pending"
    await shown_pending(operator.user, operator.token, "c-victim")

    # The request is still there to decide, and a real decision still reaches the queue.
    await database_sync_to_async(approval_decide)(call_id="c-victim", user=operator.user, decision="REJECT")
    decision = await next_of(ws, "decision", "c-victim")
    assert decision["status"] == "rejected" and decision["decided_by"] == "olga"
    await ws.disconnect()


async def test_a_forged_decision_does_not_remove_a_pending_request_from_the_queue(operator, agent, mallory):
    await ask("c-victim", agent.user, on_expire="approve")
    ws, _ = await open_queue(operator.token)

    for expired in (False, True):
        forged = HITLDecisionMadeEvent(
            session_id="s1",
            call_id="c-victim",
            decision="REJECT",
            tool_name="send_email",
            decided_by="olga",
            source="hitl",
            data={"channel": "expiry" if expired else "page", "status": "rejected", "expired": expired},
        )
        await forge(forged)
    await ask("c-marker", mallory.user)
    assert_nothing_removes(await until_request(ws, "c-marker"), "c-victim")

    assert await status_of("c-victim") == "pending"
    await shown_pending(operator.user, operator.token, "c-victim")
    await ws.disconnect()


async def test_a_forged_event_for_a_decided_request_tells_only_what_its_row_says(operator, agent, mallory):
    await ask("c-done", agent.user)
    await database_sync_to_async(approval_decide)(call_id="c-done", user=operator.user, decision="APPROVE")
    ws, _ = await open_queue(operator.token)

    # "It expired" says the event; the row says approved by olga: the message is the row's.
    await forge(
        HITLDecisionMadeEvent(
            session_id="s1",
            call_id="c-done",
            decision="REJECT",
            tool_name="send_email",
            source="hitl",
            data={"status": "expired", "expired": True},
        )
    )
    await ask("c-marker", mallory.user)
    messages = [m for m in await until_request(ws, "c-marker") if m.get("call_id") == "c-done"]
    told = [(m["type"], m["status"], m["decided_by"]) for m in messages]
    assert told in ([], [("decision", "approved", "olga")])
    await ws.disconnect()


async def test_events_naming_no_request_produce_nothing(operator, mallory):
    ws, _ = await open_queue(operator.token)
    await forge(ToolApprovalCancelledEvent(session_id="s1", call_id="c-nobody", tool_name="x", source="hitl"))
    for data in ({"call_id": {"a": 1}}, {"call_id": 5}, {"call_id": ""}, {}, {"call_id": "x" * 300}):
        await forge(
            BaseEvent(event_type="tool_approval_cancelled", event_category="hitl", source="hitl", data=data)
        )
    await ask("c-marker", mallory.user)
    assert [m["call_id"] for m in await until_request(ws, "c-marker")] == ["c-marker"]
    await still_open(ws)
    await ws.disconnect()


async def test_real_decision_expiry_and_cancellation_still_reach_the_queue(operator, agent):
    ws, _ = await open_queue(operator.token)
    for call_id in ("c-dec", "c-exp", "c-can"):
        await ask(call_id, agent.user, timeout_s=600 if call_id != "c-exp" else 60)
        request = await next_of(ws, "request", call_id)
        assert request["status"] == "pending"

    await database_sync_to_async(approval_decide)(
        call_id="c-dec", user=operator.user, decision="EDIT", modified_args={"to": "b@example.com"}
    )
    decision = await next_of(ws, "decision", "c-dec")
    assert decision["status"] == "edited" and decision["modified_args"] == {"to": "b@example.com"}

    await database_sync_to_async(approval_expire)(now=timezone.now() + timedelta(seconds=120))
    expired = await next_of(ws, "expired", "c-exp")
    assert expired["status"] == "expired" and expired["channel"] == "expiry"

    await database_sync_to_async(approval_cancel)(call_id="c-can", user=agent.user)
    cancelled = await next_of(ws, "decision", "c-can")
    assert cancelled["status"] == "cancelled"
    await ws.disconnect()


def kind(event_type: str, status: str) -> str | None:
    message = message_for(event_type, {"call_id": "c", "status": status})
    return None if message is None else message["type"]


def test_the_message_follows_the_row_status_alone():
    row = {"call_id": "c", "status": "pending"}
    for event_type in ("tool_approval_required", "hitl_decision_made", "tool_approval_cancelled"):
        assert message_for(event_type, row) == {"type": "request", **row}
    for event_type in ("hitl_decision_made", "tool_approval_cancelled"):
        for status in ("approved", "edited", "rejected", "cancelled"):
            assert kind(event_type, status) == "decision"
        assert kind(event_type, "expired") == "expired"
    # A request decided before its own "required" event is read: the decision's message says it.
    assert kind("tool_approval_required", "approved") is None


# Decide frames: checked, answered with an error frame, the socket stays open


def nested(levels: int) -> dict:
    value: dict = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def decide_frame(**fields) -> str:
    return json.dumps({"action": "decide", "call_id": "c1", "decision": "EDIT", **fields})


BAD_FRAMES = [
    ("deep-65", decide_frame(modified_args=nested(65)), "modified_args"),
    ("deep-900", decide_frame(modified_args=nested(900)), None),
    ("nul-comment", decide_frame(decision="REJECT", comment="no\x00pe"), "comment"),
    (
        "surrogate-comment",
        '{"action":"decide","call_id":"c1","decision":"REJECT","comment":"a\\ud800b"}',
        "comment",
    ),
    ("surrogate-call-id", '{"action":"decide","call_id":"c\\udfff1","decision":"APPROVE"}', "call_id"),
    ("nul-call-id", decide_frame(call_id="c\x001", decision="APPROVE"), "call_id"),
    ("number-call-id", decide_frame(call_id=5, decision="APPROVE"), "call_id"),
    ("object-call-id", decide_frame(call_id={"$ne": ""}, decision="APPROVE"), "call_id"),
    ("no-call-id", json.dumps({"action": "decide", "decision": "APPROVE"}), "call_id"),
    ("spaced-call-id", decide_frame(call_id=" c1 ", decision="APPROVE"), "call_id"),
    ("long-call-id", decide_frame(call_id="c" * 256, decision="APPROVE"), "call_id"),
    ("unknown-decision", decide_frame(decision="MAYBE"), "decision"),
    ("lowercase-decision", decide_frame(decision="approve"), "decision"),
    ("list-decision", decide_frame(decision=["APPROVE"]), "decision"),
    ("list-args", decide_frame(modified_args=[1]), "modified_args"),
    ("string-args", decide_frame(modified_args="{}"), "modified_args"),
    ("nul-key-args", decide_frame(modified_args={"a\x00": 1}), "modified_args"),
    ("number-comment", decide_frame(decision="REJECT", comment=5), "comment"),
    ("long-comment", decide_frame(decision="REJECT", comment="x" * 10_001), "comment"),
]


@pytest.mark.parametrize("frame,field", [(f, n) for _, f, n in BAD_FRAMES], ids=[i for i, _, _ in BAD_FRAMES])
async def test_a_bad_decide_frame_gets_an_error_frame_and_the_socket_stays_open(
    operator, agent, frame, field
):
    await ask("c1", agent.user)
    ws, _ = await open_queue(operator.token)
    await ws.send_to(text_data=frame)
    reply = await reply_to_me(ws)
    assert reply["type"] == "error", reply
    if field is None:
        # So deep that the frame itself may be refused before the decide action reads it.
        assert reply["code"] in ("invalid", "invalid_json", "invalid_message"), reply
    else:
        assert reply["code"] == "invalid", reply
        [error] = reply["errors"]
        assert error["field"] == field or error["field"].startswith(field + "."), reply
    await still_open(ws)
    assert await status_of("c1") == "pending"
    await ws.disconnect()


async def test_arguments_larger_than_the_limit_are_refused(operator, agent, settings):
    settings.HITL_MAX_ARGUMENTS_BYTES = 100
    await ask("c1", agent.user)
    ws, _ = await open_queue(operator.token)
    await ws.send_to(text_data=decide_frame(modified_args={"to": "x" * 200}))
    reply = await reply_to_me(ws)
    assert reply["type"] == "error" and reply["code"] == "too_large", reply
    assert reply["errors"][0]["field"] == "modified_args"
    await still_open(ws)
    await ws.disconnect()


async def test_a_good_frame_still_decides(operator, agent):
    await ask("c1", agent.user)
    ws, _ = await open_queue(operator.token)
    await ws.send_to(text_data=decide_frame(modified_args={"to": "b@example.com"}, comment=None))
    reply = await reply_to_me(ws)
    assert reply["type"] == "decided", reply
    assert reply["request"]["status"] == "edited" and reply["request"]["comment"] == ""
    assert await status_of("c1") == "edited"
    await ws.disconnect()


async def test_an_unexpected_failure_is_an_error_frame_not_a_close(operator, agent, monkeypatch):
    import hitl.consumers

    def broken(**kwargs):
        raise RuntimeError("the database went away in a way nobody planned for")

    monkeypatch.setattr(hitl.consumers, "_decide", broken)
    await ask("c1", agent.user)
    ws, _ = await open_queue(operator.token)
    await ws.send_to(text_data=decide_frame(decision="APPROVE"))
    reply = await reply_to_me(ws)
    assert reply["type"] == "error" and reply["code"] == "server_error", reply
    assert "nobody planned" not in reply["detail"]
    await still_open(ws)
    await ws.disconnect()


def test_check_decide_gives_back_what_it_checked():
    assert check_decide({"call_id": "c1", "decision": "APPROVE"}) == ("c1", "APPROVE", None, "")
    assert check_decide(
        {"call_id": "c1", "decision": "EDIT", "modified_args": {"a": [1]}, "comment": "why"}
    ) == ("c1", "EDIT", {"a": [1]}, "why")


@pytest.mark.parametrize("levels", [5_000, 30_000])
async def test_a_frame_nested_past_the_parser_gets_an_error_frame(operator, levels):
    ws, _ = await open_queue(operator.token)
    await ws.send_to(text_data="[" * levels + "]" * levels)
    reply = await reply_to_me(ws)
    assert reply["type"] == "error", reply
    await still_open(ws)
    await ws.disconnect()
