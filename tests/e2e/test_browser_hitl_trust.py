"""The approval page lets a card go only when the server says its request is no longer pending (issue 10).

A message's type is not a fact: a `decision` or `expired` message whose request is still pending must
never remove a card (such messages were once made from events an agent could post). Here the page is
driven in Debian's Chromium against Daphne: a forged cancellation stored behind the API's back, messages
injected into the page's socket, and the REST polling the page falls back to when its socket is down.
"""

from __future__ import annotations

import json
import re
import textwrap
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from tests.e2e.conftest import REQUIRE_BROWSER, UI_TIMEOUT_MS, LiveServer, Operator

if not REQUIRE_BROWSER:
    pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
from playwright.sync_api import Locator, Page, WebSocketRoute, expect  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.timeout(120)
expect.set_options(timeout=UI_TIMEOUT_MS)

# The page polls 5 s after its socket went down, then every 10 s: a poll's effect shows within this.
POLL_WAIT_MS = 25_000


@pytest.fixture(scope="module")
def agent_token(live_app: LiveServer) -> str:
    return live_app.create_agent_token("trust-agent")


@pytest.fixture(scope="module")
def operator_token(live_app: LiveServer) -> str:
    live_app.create_operator("trust-api")
    return live_app.manage("create_api_token", "trust-api", "--group", "operators").split()[-1]


def unique_call_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def ask(app: LiveServer, token: str, call_id: str, tool: str = "send_email") -> None:
    status, body = app.api(
        "POST",
        "/api/hitl/requests/",
        token,
        {
            "session_id": "trust",
            "call_id": call_id,
            "tool_name": tool,
            "arguments": {"to": "a@example.com"},
            "reason": "a test",
            "agent": "trust-agent",
            "timeout_s": 600,
        },
    )
    assert status == 201, body


def forge_cancellation(app: LiveServer, call_id: str) -> None:
    """Store a `tool_approval_cancelled` event in the server's database as an agent once could post it
    (source "hitl", another agent's call_id), bypassing the API's reserved-type check."""
    code = textwrap.dedent(
        f"""
        import asyncio
        from events.event_bus import event_bus
        from events.event_store import event_store
        from events.tool_events import ToolApprovalCancelledEvent

        async def main():
            event = ToolApprovalCancelledEvent(
                session_id="trust", call_id={call_id!r}, tool_name="send_email", source="hitl"
            )
            await event_bus.publish(event, wait_for_handlers=True)
            stored = await event_store.get_events(event_type="tool_approval_cancelled", limit=1000)
            print("stored", sum(1 for e in stored if e.data.get("call_id") == {call_id!r}))

        asyncio.run(main())
        """
    )
    output = app.manage("shell", "-c", code)
    assert "stored 1" in output, output


def sign_in(page: Page, person: Operator, *, live: bool = True) -> None:
    page.goto("/hitl/")
    expect(page).to_have_url(re.compile(r"/admin/login/\?next=/hitl/$"))
    page.fill("#id_username", person.username)
    page.fill("#id_password", person.password)
    page.locator("#login-form [type=submit]").click()
    expect(page).to_have_url(re.compile(r"://127\.0\.0\.1:\d+/hitl/$"))
    if live:
        expect(page.get_by_test_id("live-status")).to_have_text("live")


def card(page: Page, call_id: str) -> Locator:
    return page.locator(f'[data-testid=request][data-call-id="{call_id}"]')


def status_of(app: LiveServer, token: str, call_id: str) -> str:
    status, body = app.api("GET", f"/api/hitl/requests/{call_id}/", token)
    assert status == 200, body
    return str(body["status"])


def test_a_forged_cancellation_leaves_the_card_on_the_page(
    live_app: LiveServer, new_page: Callable[..., Page], agent_token: str, operator_token: str
) -> None:
    olga = live_app.create_operator("trust-olga")
    page = new_page("olga")
    sign_in(page, olga)
    victim = unique_call_id("victim")
    ask(live_app, agent_token, victim)
    expect(card(page, victim)).to_be_visible()
    page.evaluate("window.notReloaded = true")

    forge_cancellation(live_app, victim)
    # A request asked after the forged event: once its card shows, the page has had whatever the
    # forged event made the server send (the queue is sent in the store's order).
    marker = unique_call_id("marker")
    ask(live_app, agent_token, marker)
    expect(card(page, marker)).to_be_visible()
    expect(card(page, victim)).to_be_visible()
    expect(card(page, victim).get_by_test_id("approve")).to_be_enabled()
    assert status_of(live_app, operator_token, victim) == "pending"

    # A real decision still takes the card away.
    status, body = live_app.api(
        "POST", f"/api/hitl/requests/{victim}/decision/", operator_token, {"decision": "REJECT"}
    )
    assert status == 200, body
    expect(card(page, victim)).to_have_count(0)
    assert page.evaluate("window.notReloaded") is True


def test_a_decision_message_saying_pending_never_removes_a_card(
    live_app: LiveServer, new_page: Callable[..., Page], agent_token: str
) -> None:
    olga = live_app.create_operator("trust-ines")
    page = new_page("ines")
    routes: list[WebSocketRoute] = []

    def pass_through(route: WebSocketRoute) -> None:
        route.connect_to_server()  # everything passes both ways; the test may add messages
        routes.append(route)

    page.route_web_socket("**/ws/hitl/", pass_through)
    sign_in(page, olga)
    victim = unique_call_id("victim")
    ask(live_app, agent_token, victim, tool="wire_transfer")
    request = card(page, victim)
    expect(request).to_be_visible()
    count = int(page.get_by_test_id("pending-count").inner_text())

    # The very element stays (a card removed and made again would not have this).
    request.evaluate("element => { element.kept = true; }")

    _, row = live_app.api("GET", f"/api/hitl/requests/{victim}/", agent_token)
    route = routes[-1]

    def marker_shown() -> dict[str, Any]:
        # Messages are handled in order: once this one's card shows, the ones before it were handled.
        marker: dict[str, Any] = {**row, "call_id": unique_call_id("marker"), "status": "pending"}
        route.send(json.dumps({"type": "request", **marker}))
        expect(card(page, marker["call_id"])).to_be_visible()
        return marker

    for message in (
        {"type": "decision", **row, "status": "pending"},
        {"type": "expired", **row, "status": "pending"},
        {"type": "decision", "call_id": victim},  # no status: says nothing
        {"type": "decision", **{k: v for k, v in row.items() if k != "status"}},
    ):
        route.send(json.dumps(message))
    first = marker_shown()
    expect(request).to_have_count(1)
    assert request.evaluate("element => element.kept === true"), "the card was removed and made again"
    expect(request.get_by_test_id("approve")).to_be_enabled()

    # A repeated request (and a "decision" saying pending) is an update of the card, not a second card.
    # (each carries the whole row as the server has it now: the last one is what the card shows)
    newer = {**row, "reason": "updated by the server"}
    route.send(json.dumps({"type": "request", **newer}))
    route.send(json.dumps({"type": "decision", **newer, "agent": "renamed"}))
    marker = marker_shown()
    expect(request).to_have_count(1)
    assert request.evaluate("element => element.kept === true"), "the card was removed and made again"
    expect(request.get_by_test_id("reason")).to_have_text("updated by the server")
    expect(request.get_by_test_id("agent")).to_have_text("renamed")
    expect(page.get_by_test_id("pending-count")).to_have_text(str(count + 2))

    # A request the server says has left pending goes, whatever the message is called.
    route.send(json.dumps({"type": "decision", **marker, "status": "rejected", "decided_by": "someone"}))
    expect(card(page, marker["call_id"])).to_have_count(0)
    route.send(json.dumps({"type": "request", **first, "status": "cancelled"}))
    expect(card(page, first["call_id"])).to_have_count(0)
    route.send(json.dumps({"type": "expired", **row, "status": "expired", "channel": "expiry"}))
    expect(request).to_have_count(0)
    expect(page.get_by_test_id("pending-count")).to_have_text(str(count - 1))


# No WebSocket at all (a proxy that refuses it): the page keeps current by polling the REST API.
NO_WEBSOCKET = """
window.WebSocket = class {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSING = 2;
  static CLOSED = 3;
  constructor() { throw new Error("WebSockets are blocked here"); }
};
"""


def test_polling_lets_a_card_go_only_when_the_request_left_pending(
    live_app: LiveServer, new_page: Callable[..., Page], agent_token: str, operator_token: str
) -> None:
    olga = live_app.create_operator("trust-jon")
    victim = unique_call_id("victim")
    decided = unique_call_id("decided")
    ask(live_app, agent_token, victim)
    ask(live_app, agent_token, decided)
    page = new_page("jon")
    page.add_init_script(NO_WEBSOCKET)
    polls: list[str] = []
    page.on("request", lambda r: polls.append(r.url) if "/api/hitl/requests/?" in r.url else None)
    sign_in(page, olga, live=False)
    expect(card(page, victim)).to_be_visible()
    expect(card(page, decided)).to_be_visible()

    forge_cancellation(live_app, victim)
    status, body = live_app.api(
        "POST", f"/api/hitl/requests/{decided}/decision/", operator_token, {"decision": "APPROVE"}
    )
    assert status == 200, body

    expect(card(page, decided)).to_have_count(0, timeout=POLL_WAIT_MS)
    assert polls, "the page did not poll"
    expect(card(page, victim)).to_be_visible()
    expect(card(page, victim).get_by_test_id("approve")).to_be_enabled()
    assert status_of(live_app, operator_token, victim) == "pending"
