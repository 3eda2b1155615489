"""Two Daphne processes on one PostgreSQL and one Redis: one deployment, whichever server a client uses.

An event posted to the first server reaches a WebSocket client of the second; a decision made through
the second wakes the agent waiting on the first, and the first's approval queue hears of it. Both
servers' fallbacks (the live feed's poll, the waiters' database re-check) are set far beyond the
test's deadlines, so only the distributed bus can make these arrive in time.
"""

import asyncio
import json
import threading
import time
import uuid

import pytest
from websockets.asyncio.client import connect

from tests.e2e.test_ingest_crash import Server, manage, request, server_database  # noqa: F401

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(120)]
DEADLINE_S = 5.0


@pytest.fixture
def servers(server_database, monkeypatch):  # noqa: F811
    monkeypatch.setenv("LIVE_FEED_POLL_INTERVAL", "60")
    monkeypatch.setenv("HITL_RECHECK_INTERVAL_S", "60")
    first, second = Server(server_database), Server(server_database)
    try:
        yield first, second
    finally:
        first.stop()
        second.stop()


def token(database, username: str, group: str) -> str:
    return manage("create_api_token", username, "--group", group, database=database).split()[-1]


def test_an_event_posted_to_one_server_reaches_a_socket_of_the_other(servers, server_database):  # noqa: F811
    first, second = servers
    auditor = token(server_database, "ada", "auditors")
    agent = token(server_database, "bot", "agents")
    session_id = f"two-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        url = f"ws://127.0.0.1:{second.port}/ws/events/?token={auditor}&session_id={session_id}"
        async with connect(url) as ws:
            assert json.loads(await ws.recv())["type"] == "caught_up"
            event = {
                "event_type": "agent_switched",
                "session_id": session_id,
                "data": {"from_agent": "triage", "to_agent": "billing", "reason": "refund"},
            }
            status, body = await asyncio.to_thread(
                request, first.port, "POST", "/api/events/", json.dumps(event).encode(), agent
            )
            assert status == 201, body
            message = json.loads(await asyncio.wait_for(ws.recv(), DEADLINE_S))
            assert message["type"] == "event" and message["position"] == body["position"]
            assert message["event"]["event_id"] == body["event_ids"][0]
            assert message["event"]["data"]["to_agent"] == "billing"

    asyncio.run(scenario())


def test_a_decision_through_one_server_wakes_the_agent_waiting_on_the_other(servers, server_database):  # noqa: F811
    first, second = servers
    agent = token(server_database, "bot", "agents")
    operator = token(server_database, "olga", "operators")
    call_id = f"call-{uuid.uuid4().hex[:8]}"
    ask = {
        "session_id": "s-two",
        "call_id": call_id,
        "tool_name": "refund_payment",
        "arguments": {"amount": 120},
        "reason": "customer asked",
        "agent": "billing",
        "timeout_s": 120,
    }
    status, body = request(first.port, "POST", "/api/hitl/requests/", json.dumps(ask).encode(), agent)
    assert status == 201, body

    waited: dict = {}

    def wait_on_first() -> None:
        started = time.monotonic()
        waited["answer"] = request(
            first.port, "GET", f"/api/hitl/requests/{call_id}/?wait=30", token=agent, timeout=40
        )
        waited["seconds"] = time.monotonic() - started

    async def scenario() -> None:
        queue_url = f"ws://127.0.0.1:{first.port}/ws/hitl/?token={operator}"
        async with connect(queue_url) as queue:
            snapshot = json.loads(await queue.recv())
            assert [r["call_id"] for r in snapshot["pending"]] == [call_id]
            waiter = threading.Thread(target=wait_on_first)
            waiter.start()
            await asyncio.sleep(0.5)  # the agent is waiting on the first server
            decision = {"decision": "EDIT", "modified_args": {"amount": 100}, "comment": "partial"}
            status, decided = await asyncio.to_thread(
                request,
                second.port,
                "POST",
                f"/api/hitl/requests/{call_id}/decision/",
                json.dumps(decision).encode(),
                operator,
            )
            assert status == 200, decided
            await asyncio.to_thread(waiter.join, DEADLINE_S)
            assert not waiter.is_alive(), "the agent on the first server was not woken"
            # The first server's approval queue heard of the decision made on the second.
            while True:
                message = json.loads(await asyncio.wait_for(queue.recv(), DEADLINE_S))
                if message["type"] == "decision" and message["call_id"] == call_id:
                    break
            assert message["status"] == "edited" and message["decided_by"] == "olga"

    asyncio.run(scenario())
    status, answer = waited["answer"]
    assert status == 200, answer
    assert answer["status"] == "edited" and answer["modified_args"] == {"amount": 100}
    assert waited["seconds"] < 0.5 + DEADLINE_S
