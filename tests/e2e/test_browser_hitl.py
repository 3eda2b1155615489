"""The approval page in a real browser (Debian's Chromium, driven by Playwright), against Daphne.

Operators sign in through the admin's login page and keep /hitl/ open; an agent in another process asks
for approval through hitl.client and waits. The request appears in every open browser without a reload;
one operator edits the arguments (validated, with a diff) and sends them; the agent receives the edited
arguments, and the other operator's page lets the card go. A screenshot of the page with the pending
request is kept in test-output/browser/ (or $TEST_OUTPUT_DIR/browser/).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from tests.e2e.conftest import REQUIRE_BROWSER, ROOT, UI_TIMEOUT_MS, LiveServer, Operator, save_screenshot

if not REQUIRE_BROWSER:
    pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
from playwright.sync_api import Locator, Page, WebSocketRoute, expect  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Callable

AGENT_EXIT_S = 20.0  # from the click to the waiting agent's exit
PROPOSED = {"to": "a@example.com", "subject": "hi"}
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True}

pytestmark = pytest.mark.timeout(120)
expect.set_options(timeout=UI_TIMEOUT_MS)


class Agent:
    """tests/e2e/agent_wait.py in a process of its own, waiting for the decision on one call."""

    def __init__(self, app: LiveServer, token: str, call_id: str, tool: str, arguments: dict[str, Any]):
        self.call_id = call_id
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.agent_wait", "--url", app.url, "--call-id", call_id]
            + ["--tool", tool, "--arguments", json.dumps(arguments), "--agent", "agent1"]
            + ["--reason", "Send the weekly report", "--session-id", f"browser-{call_id}"],
            cwd=ROOT,
            env={**os.environ, "AGENT_TOKEN": token},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def decision(self) -> dict[str, Any]:
        """What the agent printed when it got its answer (fails if it is not done within AGENT_EXIT_S)."""
        try:
            stdout, stderr = self.process.communicate(timeout=AGENT_EXIT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            stdout, stderr = self.process.communicate()
            pytest.fail(f"the agent still waits {AGENT_EXIT_S:g} s after the decision: {stderr[-2000:]}")
        assert self.process.returncode == 0, f"agent exited {self.process.returncode}: {stdout} {stderr}"
        return dict(json.loads(stdout.strip().splitlines()[-1]))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


@pytest.fixture(scope="module")
def agent_token(live_app: LiveServer) -> str:
    return live_app.create_agent_token("agent1")


@pytest.fixture
def start_agent(live_app: LiveServer, agent_token: str) -> Any:
    """start_agent(call_id, tool, arguments): an agent process waiting for approval of that call."""
    token = agent_token
    agents: list[Agent] = []

    def start(call_id: str, tool: str, arguments: dict[str, Any]) -> Agent:
        agent = Agent(live_app, token, call_id, tool, arguments)
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.stop()


def sign_in(page: Page, person: Operator) -> None:
    """Open /hitl/, sign in on the admin's login page it sends us to, and wait for the live socket."""
    page.goto("/hitl/")
    expect(page).to_have_url(re.compile(r"/admin/login/\?next=/hitl/$"))
    page.fill("#id_username", person.username)
    page.fill("#id_password", person.password)
    page.locator("#login-form [type=submit]").click()
    expect(page).to_have_url(re.compile(r"://127\.0\.0\.1:\d+/hitl/$"))
    expect(page.get_by_test_id("live-status")).to_have_text("live")


def card(page: Page, call_id: str) -> Locator:
    return page.locator(f'[data-testid=request][data-call-id="{call_id}"]')


def pending_count(page: Page) -> int:
    return int(page.get_by_test_id("pending-count").inner_text())


def expect_card_shows(page: Page, call_id: str, tool: str, arguments: dict[str, Any]) -> None:
    request = card(page, call_id)
    expect(request).to_be_visible()
    expect(request.get_by_test_id("tool")).to_have_text(tool)
    expect(request.get_by_test_id("agent")).to_have_text("agent1")
    expect(request.get_by_test_id("reason")).to_have_text("Send the weekly report")
    expect(request.get_by_test_id("age")).not_to_be_empty()
    expect(request.get_by_test_id("time-left")).to_have_text(re.compile(r"^\d+m \d\ds$"))  # about 5 minutes
    shown = request.get_by_test_id("arguments").inner_text()
    assert json.loads(shown) == arguments
    assert "\n  " in shown, "the arguments are not shown as formatted JSON"


def unique_call_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def test_an_operator_edits_a_live_request_and_the_waiting_agent_runs_the_edited_call(
    live_app: LiveServer, new_page: Callable[..., Page], start_agent: Any
) -> None:
    alice = live_app.create_operator("alice")
    bob = live_app.create_operator("bob")
    desk = new_page("alice")
    phone = new_page("bob", **PHONE)  # the page is meant to be usable on a phone
    sign_in(desk, alice)
    sign_in(phone, bob)
    before = pending_count(desk)
    # Set in the page: still there at the end means nobody reloaded it.
    phone.evaluate("window.notReloaded = true")
    desk.evaluate("window.notReloaded = true")

    call_id = unique_call_id("email")
    agent = start_agent(call_id, "send_email", PROPOSED)

    # The request appears live in both browsers.
    for page in (desk, phone):
        expect_card_shows(page, call_id, "send_email", PROPOSED)
        expect(page.get_by_test_id("pending-count")).to_have_text(str(before + 1))
        expect(page.get_by_test_id("empty")).to_be_hidden()
    save_screenshot(desk, "hitl-pending-request")
    save_screenshot(phone, "hitl-pending-request-phone")

    # Alice edits: the editor starts from the proposed arguments; nothing changed, nothing to send.
    request = card(desk, call_id)
    request.get_by_test_id("edit").click()
    editor = request.get_by_test_id("args-editor")
    send = request.get_by_test_id("send-edit")
    error = request.get_by_test_id("args-error")
    diff = request.get_by_test_id("args-diff")
    expect(editor).to_be_visible()
    assert json.loads(editor.input_value()) == PROPOSED
    expect(send).to_be_disabled()

    # Invalid JSON: a plain message, and the send button stays disabled.
    editor.fill('{"to": "b@example.com", "subject": ')
    expect(error).not_to_be_empty()
    expect(error).to_contain_text("JSON")
    expect(send).to_be_disabled()
    editor.fill('["not", "an object"]')
    expect(error).to_contain_text("object")
    expect(send).to_be_disabled()

    # Valid and different: no error, a diff naming the changes, and the button comes on.
    edited = {"to": "b@example.com", "subject": "hi", "cc": ["boss@example.com"]}
    editor.fill(json.dumps(edited, indent=2))
    expect(error).to_be_empty()
    expect(diff).to_contain_text("Changed: to")
    expect(diff).to_contain_text("Added: cc")
    expect(diff).to_contain_text("a@example.com")  # the line taken out...
    expect(diff).to_contain_text("b@example.com")  # ...and the one put in
    expect(send).to_be_enabled()
    save_screenshot(desk, "hitl-edit-diff")
    send.click()

    # The agent in the other process gets the edited arguments.
    decision = agent.decision()
    assert decision["call_id"] == call_id
    assert decision["status"] == "edited"
    assert decision["arguments"] == edited
    assert decision["proposed_arguments"] == PROPOSED
    assert decision["decided_by"] == "alice"
    assert decision["channel"] == "page"

    # The card leaves both pages, Bob's by the socket's message alone.
    for page in (desk, phone):
        expect(card(page, call_id)).to_have_count(0)
        expect(page.get_by_test_id("pending-count")).to_have_text(str(before))
        assert page.evaluate("window.notReloaded") is True
    expect(desk.get_by_test_id("error")).to_have_count(0)


def test_the_second_operator_to_decide_is_told_plainly_that_someone_else_decided_first(
    live_app: LiveServer, new_page: Callable[..., Page], start_agent: Any, agent_token: str
) -> None:
    carol = live_app.create_operator("carol")
    dave = live_app.create_operator("dave")
    first = new_page("carol")
    second = new_page("dave")
    call_id = unique_call_id("wire")

    # Dave's page does not hear of Carol's decision in time (its socket drops that one message), as when
    # both click at once: his decision reaches the server second.
    def hold_back_the_decision(route: WebSocketRoute) -> None:
        server = route.connect_to_server()

        def to_page(message: str | bytes) -> None:
            data = json.loads(message)
            if not (data.get("type") == "decision" and data.get("call_id") == call_id):
                route.send(message)

        server.on_message(to_page)

    second.route_web_socket("**/ws/hitl/", hold_back_the_decision)
    sign_in(first, carol)
    sign_in(second, dave)

    arguments = {"amount": 100, "iban": "DE00 1234"}
    agent = start_agent(call_id, "wire_transfer", arguments)
    expect(card(first, call_id)).to_be_visible()
    stale = card(second, call_id)
    expect(stale).to_be_visible()

    card(first, call_id).get_by_test_id("approve").click()
    expect(card(first, call_id)).to_have_count(0)
    decision = agent.decision()
    assert decision["status"] == "approved"
    assert (decision["decided_by"], decision["arguments"]) == ("carol", arguments)

    # Dave rejects what Carol approved already: refused, and said in words in his card.
    stale.get_by_test_id("reject").click()
    stale.get_by_test_id("reject-comment").fill("Not this month.")
    stale.get_by_test_id("send-reject").click()
    message = stale.get_by_test_id("error")
    expect(message).to_be_visible()
    expect(message).to_contain_text("already approved")
    expect(message).to_contain_text("carol")
    text = message.inner_text()
    # Words, not a payload or a status code (the call id itself may contain digits like 409).
    assert "{" not in text and not text.strip().startswith("409"), f"not a plain message: {text!r}"
    assert '"detail"' not in text and "HTTP" not in text, f"not a plain message: {text!r}"
    expect(stale.get_by_test_id("approve")).to_be_disabled()
    save_screenshot(second, "hitl-conflict")

    # The first decision stands.
    status, body = live_app.api("GET", f"/api/hitl/requests/{call_id}/", agent_token)
    assert status == 200, body
    assert (body["status"], body["decided_by"]) == ("approved", "carol")


def test_someone_without_the_operator_role_gets_a_forbidden_page(
    live_app: LiveServer, new_page: Callable[..., Page]
) -> None:
    erin = live_app.create_operator("erin", group="auditors")
    page = new_page("erin")
    page.goto("/hitl/")
    page.fill("#id_username", erin.username)
    page.fill("#id_password", erin.password)
    page.locator("#login-form [type=submit]").click()
    expect(page).to_have_url(re.compile(r"/hitl/$"))
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    expect(page.locator("main")).to_contain_text("needs the operator role")
    expect(page.get_by_test_id("request")).to_have_count(0)
    response = page.request.get("/hitl/")
    assert response.status == 403


def test_the_page_reconnects_after_a_server_restart_and_misses_nothing(
    own_app: LiveServer, new_page: Callable[..., Page]
) -> None:
    frank = own_app.create_operator("frank")
    operator_token = own_app.manage("create_api_token", "frank", "--group", "operators").split()[-1]
    agent_token = own_app.create_agent_token("agent1")
    page = new_page("frank", base_url=own_app.url)
    sign_in(page, frank)
    page.evaluate("window.notReloaded = true")
    status = page.get_by_test_id("live-status")

    own_app.stop()
    expect(status).to_have_text("reconnecting")
    own_app.start()  # same port, same database
    # Asked while the page is still reconnecting (its backoff): the snapshot on reconnect brings it.
    call_id = unique_call_id("restart")
    created, body = own_app.api(
        "POST",
        "/api/hitl/requests/",
        agent_token,
        {"session_id": "s1", "call_id": call_id, "tool_name": "delete_file", "arguments": {"path": "/tmp/x"}},
    )
    assert created == 201, body
    expect(status).to_have_text("live")
    expect(card(page, call_id)).to_be_visible()
    expect(card(page, call_id).get_by_test_id("tool")).to_have_text("delete_file")

    # Decided elsewhere (the API): the card leaves this page.
    decided, body = own_app.api(
        "POST", f"/api/hitl/requests/{call_id}/decision/", operator_token, {"decision": "REJECT"}
    )
    assert decided == 200, body
    expect(card(page, call_id)).to_have_count(0)
    expect(page.get_by_test_id("empty")).to_be_visible()
    assert page.evaluate("window.notReloaded") is True
