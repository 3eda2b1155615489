"""A WebSocket client that stops reading, against a real Daphne: it gets a gap, resumes, misses nothing.

The client's socket stops being read (the websockets library stops reading when its small queue is
full), so the server's writes back up through the kernel's buffers into Daphne's; the consumer then
holds its writes, the connection's bounded queue overflows, and the server lets go of what it held.
When the client reads again it finds `{"type": "gap", "after": P}`, resumes from P, and ends up with
every event exactly once.
"""

import asyncio
import json
import uuid

import pytest
from websockets.asyncio.client import connect

from tests.e2e.test_ingest_crash import Server, manage, request, server_database  # noqa: F401

EVENTS = 3000
BATCH = 200
PADDING = "x" * 4000  # 12 MB in all: more than the kernel's socket buffers hold


def post_events(port: int, token: str, session_id: str) -> list[str]:
    ids = []
    for start in range(0, EVENTS, BATCH):
        batch = [
            {
                "event_id": str(uuid.uuid4()),
                "event_type": "tool_execution_completed",
                "session_id": session_id,
                "data": {"tool_name": "search", "call_id": f"c{n}", "n": n, "padding": PADDING},
            }
            for n in range(start, start + BATCH)
        ]
        status, body = request(port, "POST", "/api/events/", json.dumps(batch).encode(), token, timeout=60)
        assert status == 201, body
        ids.extend(event["event_id"] for event in batch)
    return ids


@pytest.mark.timeout(180)
def test_a_client_that_stops_reading_gets_a_gap_and_loses_nothing(server_database, monkeypatch):  # noqa: F811
    monkeypatch.setenv("LIVE_FEED_QUEUE_SIZE", "100")
    auditor = manage("create_api_token", "ada", "--group", "auditors", database=server_database).split()[-1]
    agent = manage("create_api_token", "bot", "--group", "agents", database=server_database).split()[-1]
    server = Server(server_database)
    session_id = f"slow-{uuid.uuid4().hex[:8]}"
    try:

        async def scenario() -> None:
            url = f"ws://127.0.0.1:{server.port}/ws/events/?token={auditor}&session_id={session_id}"
            async with connect(url, max_queue=1, max_size=None) as ws:
                assert json.loads(await ws.recv())["type"] == "caught_up"
                # Not reading while the events are posted.
                ids = await asyncio.to_thread(post_events, server.port, agent, session_id)
                received: list[dict] = []
                while True:
                    message = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    if message["type"] == "gap":
                        gap = message
                        break
                    assert message["type"] == "event"
                    received.append(message)
                assert len(received) < EVENTS, "the client never fell behind: the test proves nothing"
                if received:
                    assert gap["after"] == received[-1]["position"]
                await ws.send(json.dumps({"action": "resume", "after": gap["after"]}))
                while len(received) < EVENTS:
                    message = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    if message["type"] == "event":
                        received.append(message)
                    else:
                        assert message["type"] == "caught_up", message
                got = [m["event"]["event_id"] for m in received]
                assert got == ids  # every event, once, in order
                positions = [m["position"] for m in received]
                assert positions == sorted(set(positions))

        asyncio.run(scenario())
    finally:
        server.stop()
