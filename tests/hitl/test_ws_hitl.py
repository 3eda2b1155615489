"""/ws/hitl/: the snapshot, live request/decision/expired messages, and deciding over the socket."""

import json
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.utils import timezone

from accounts.services import api_token_issue
from eventbus_project.asgi import application
from hitl.models import ApprovalRequest
from hitl.services import approval_cancel, approval_decide, approval_expire, approval_request

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def operator():
    return api_token_issue(username="olga", group="operators")


@pytest.fixture
def agent():
    return api_token_issue(username="bot", group="agents")


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


async def open_queue(token: str) -> tuple[WebsocketCommunicator, dict]:
    ws = WebsocketCommunicator(application, f"/ws/hitl/?token={token}")
    connected, _ = await ws.connect()
    assert connected
    return ws, json.loads(await ws.receive_from(5))


async def reply_to_me(ws, timeout: float = 5.0) -> dict:
    """The next message that answers what this client sent (queue updates may come in between)."""
    while True:
        message = json.loads(await ws.receive_from(timeout))
        if message["type"] not in ("snapshot", "request", "decision", "expired"):
            return message


async def next_of(ws, kind: str, call_id: str, timeout: float = 5.0) -> dict:
    while True:
        message = json.loads(await ws.receive_from(timeout))
        if message["type"] == kind and message.get("call_id") == call_id:
            return message


async def test_snapshot_then_live_changes(operator, agent):
    await ask("c-old", agent.user)
    ws, snapshot = await open_queue(operator.token)
    assert snapshot["type"] == "snapshot"
    assert [r["call_id"] for r in snapshot["pending"]] == ["c-old"]
    assert snapshot["pending"][0]["arguments"] == {"to": "a@example.com"}

    await ask("c-new", agent.user)
    request = await next_of(ws, "request", "c-new")
    assert request["status"] == "pending" and request["tool_name"] == "send_email"
    assert request["agent"] == "mailer" and request["reason"] == "wants to mail"

    await database_sync_to_async(approval_decide)(
        call_id="c-new", user=operator.user, decision="EDIT", modified_args={"to": "b@example.com"}
    )
    decision = await next_of(ws, "decision", "c-new")
    assert decision["status"] == "edited" and decision["modified_args"] == {"to": "b@example.com"}
    assert decision["decided_by"] == "olga"

    await database_sync_to_async(approval_cancel)(call_id="c-old", user=agent.user)
    cancelled = await next_of(ws, "decision", "c-old")
    assert cancelled["status"] == "cancelled"
    await ws.disconnect()


async def test_expiry_is_announced(operator, agent):
    ws, _ = await open_queue(operator.token)
    await ask("c-exp", agent.user, timeout_s=60)
    await next_of(ws, "request", "c-exp")
    await database_sync_to_async(approval_expire)(now=timezone.now() + timedelta(seconds=120))
    expired = await next_of(ws, "expired", "c-exp")
    assert expired["status"] == "expired" and expired["channel"] == "expiry"
    await ws.disconnect()


async def test_deciding_over_the_socket(operator, agent):
    await ask("c1", agent.user)
    ws, _ = await open_queue(operator.token)
    await ws.send_to(
        text_data=json.dumps(
            {
                "action": "decide",
                "call_id": "c1",
                "decision": "APPROVE",
                "modified_args": None,
                "comment": "ok",
            }
        )
    )
    reply = await next_of(ws, "decided", "c1")
    assert reply["request"]["status"] == "approved" and reply["request"]["channel"] == "websocket"
    assert reply["request"]["decided_by"] == "olga" and reply["request"]["comment"] == "ok"
    stored = await database_sync_to_async(ApprovalRequest.objects.get)(call_id="c1")
    assert stored.channel == "websocket" and stored.decided_by_username == "olga"

    # Someone else decided first: a plain conflict, the connection stays.
    await ws.send_to(text_data=json.dumps({"action": "decide", "call_id": "c1", "decision": "REJECT"}))
    conflict = await next_of(ws, "error", "c1")
    assert conflict["code"] == "already_decided" and "approved (by olga)" in conflict["detail"]

    for message, code in [
        ({"action": "decide", "call_id": "nope", "decision": "APPROVE"}, "not_found"),
        ({"action": "decide", "call_id": "c1", "decision": "MAYBE"}, "invalid"),
        ({"action": "decide", "call_id": "", "decision": "APPROVE"}, "invalid"),
        ({"action": "decide", "call_id": "c1", "decision": "EDIT", "modified_args": [1]}, "invalid"),
        ({"action": "decide", "call_id": "c1", "decision": "APPROVE", "comment": 5}, "invalid"),
    ]:
        await ws.send_to(text_data=json.dumps(message))
        reply = await reply_to_me(ws)
        assert reply["type"] == "error" and reply["code"] == code, (message, reply)
    await ws.send_to(text_data="{")
    assert (await reply_to_me(ws))["code"] == "invalid_json"
    await ws.send_to(text_data='{"action": "ping"}')
    assert await reply_to_me(ws) == {"type": "pong"}
    await ws.disconnect()


async def test_an_edit_is_checked_before_it_is_kept(operator, agent, request):
    from hitl.conf import register_tool_schema, unregister_tool_schema

    register_tool_schema(
        "send_email",
        {"type": "object", "properties": {"to": {"type": "string"}}, "required": ["to"]},
    )
    request.addfinalizer(lambda: unregister_tool_schema("send_email"))
    await ask("c2", agent.user)
    ws, _ = await open_queue(operator.token)
    await ws.send_to(
        text_data=json.dumps(
            {"action": "decide", "call_id": "c2", "decision": "EDIT", "modified_args": {"to": 5}}
        )
    )
    error = await next_of(ws, "error", "c2")
    assert error["code"] == "invalid" and "to" in error["detail"]
    stored = await database_sync_to_async(ApprovalRequest.objects.get)(call_id="c2")
    assert stored.status == "pending"
    await ws.disconnect()


async def test_only_operators_get_the_queue(agent):
    auditor = await database_sync_to_async(api_token_issue)(username="ada", group="auditors")
    for token in (agent.token, auditor.token):
        ws = WebsocketCommunicator(application, f"/ws/hitl/?token={token}")
        await ws.connect()
        reply = json.loads(await ws.receive_from(5))
        assert reply["code"] == "permission_denied"
        assert await ws.receive_output(5) == {"type": "websocket.close", "code": 4403}
