"""The approval desk (/hitl/) in Debian's Chromium at a desk's size (1400x900) and a phone's (390x844):
filters that narrow the queue and survive a reload, the compact view, the keyboard shortcuts (and that
they stay quiet while someone types), presence between two operators, and the confirming second step
before a high-risk tool is approved. Each page is checked for horizontal overflow and console errors;
screenshots go to test-output/browser/.

The server runs with tests/e2e/desk_settings.py: delete_* is "high" by HITL_TOOL_RISK, wipe_disk is
"high" by its schema's x-risk. Each test keeps to a session of its own and opens /hitl/?session=<it>,
so what other tests left pending does not get in its way.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import (
    REQUIRE_BROWSER,
    ROOT,
    UI_TIMEOUT_MS,
    LiveServer,
    Operator,
    need_browser,
    save_screenshot,
)

if not REQUIRE_BROWSER:
    pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
from playwright.sync_api import Locator, Page, expect  # noqa: E402

pytestmark = pytest.mark.timeout(180)
expect.set_options(timeout=UI_TIMEOUT_MS)

SIZES = {
    "desk": {"viewport": {"width": 1400, "height": 900}},
    "phone": {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True},
}
MOMENT = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$")
AGENT_EXIT_S = 20.0


@pytest.fixture(scope="module")
def live_app() -> Iterator[LiveServer]:
    """The app under Daphne with tests/e2e/desk_settings.py (tools' risk levels)."""
    need_browser()
    with tempfile.TemporaryDirectory(prefix="e2e-desk-") as home:
        server = LiveServer(Path(home))
        server.env["DJANGO_SETTINGS_MODULE"] = "tests.e2e.desk_settings"
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="module")
def agent_token(live_app: LiveServer) -> str:
    return live_app.create_agent_token("desk-agent")


@pytest.fixture
def session_id() -> str:
    return f"desk-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def ask(live_app: LiveServer, agent_token: str, session_id: str) -> Iterator[Callable[..., str]]:
    """ask(tool, agent=..., arguments=...): a pending request in this test's session; its call_id.
    Whatever is still pending at the end is withdrawn, so the next test starts with an empty queue."""
    asked: list[str] = []

    def make(tool: str, agent: str = "agent-a", arguments: dict[str, Any] | None = None) -> str:
        call_id = f"{tool}-{uuid.uuid4().hex[:8]}"
        status, body = live_app.api(
            "POST",
            "/api/hitl/requests/",
            agent_token,
            {
                "call_id": call_id,
                "session_id": session_id,
                "tool_name": tool,
                "agent": agent,
                "arguments": arguments if arguments is not None else {"n": len(asked)},
                "reason": f"{tool} for the desk test",
                "timeout_s": 600,
            },
        )
        assert status == 201, body
        asked.append(call_id)
        return call_id

    yield make
    for call_id in asked:
        live_app.api("POST", f"/api/hitl/requests/{call_id}/cancel/", agent_token, {})


class Agent:
    """tests/e2e/agent_wait.py in a process of its own, waiting for the decision on one call."""

    def __init__(self, app: LiveServer, token: str, call_id: str, tool: str, session_id: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.agent_wait", "--url", app.url, "--call-id", call_id]
            + ["--tool", tool, "--arguments", json.dumps({"table": "users"}), "--agent", "agent-risky"]
            + ["--reason", "Tidy up", "--session-id", session_id],
            cwd=ROOT,
            env={**os.environ, "AGENT_TOKEN": token},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def decision(self) -> dict[str, Any]:
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


@pytest.fixture
def start_agent(live_app: LiveServer, agent_token: str, session_id: str) -> Iterator[Callable[..., Agent]]:
    agents: list[Agent] = []

    def start(call_id: str, tool: str) -> Agent:
        agent = Agent(live_app, agent_token, call_id, tool, session_id)
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.stop()


class Desk:
    """A signed-in operator's /hitl/ in a browser context of its own, with its console errors."""

    def __init__(self, page: Page, person: Operator) -> None:
        self.page = page
        self.person = person
        self.errors: list[str] = []
        page.on(
            "console", lambda message: self.errors.append(message.text) if message.type == "error" else None
        )
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def sign_in(self, path: str = "/hitl/") -> None:
        self.page.goto(path)
        expect(self.page).to_have_url(re.compile(r"/admin/login/\?next="))
        self.page.fill("#id_username", self.person.username)
        self.page.fill("#id_password", self.person.password)
        self.page.locator("#login-form [type=submit]").click()
        expect(self.page.get_by_test_id("live-status")).to_have_text("live")

    def card(self, call_id: str) -> Locator:
        return self.page.locator(f'[data-testid=request][data-call-id="{call_id}"]')

    def shown(self) -> list[str]:
        """The call_ids of the cards on show, top to bottom."""
        return list(
            self.page.locator("[data-testid=request]:visible").evaluate_all(
                "cards => cards.map(c => c.dataset.callId)"
            )
        )

    def focused(self) -> str | None:
        found = self.page.locator("[data-testid=request].is-focused")
        return found.get_attribute("data-call-id") if found.count() else None

    def assert_fits(self, what: str) -> None:
        overflow = self.page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{overflow} px of horizontal overflow: {what}"

    def assert_no_errors(self) -> None:
        assert self.errors == [], self.errors


@pytest.fixture
def open_desk(live_app: LiveServer, new_page: Callable[..., Page]) -> Callable[..., Desk]:
    def make(size: str, name: str, path: str = "/hitl/") -> Desk:
        person = live_app.create_operator(f"{name}-{size}-{uuid.uuid4().hex[:4]}")
        desk = Desk(new_page(f"{name}-{size}", **SIZES[size]), person)
        desk.sign_in(path)
        return desk

    return make


def pending_count(page: Page) -> int:
    return int(page.get_by_test_id("pending-count").inner_text())


@pytest.mark.parametrize("size", ["desk", "phone"])
def test_filters_narrow_the_queue_and_survive_a_reload(
    ask: Callable[..., str], open_desk: Callable[..., Desk], session_id: str, size: str
) -> None:
    delete = ask("delete_records", agent="agent-a")
    email = ask("send_email", agent="agent-a")
    deploy = ask("deploy_api", agent="agent-b")
    read = ask("read_file", agent="agent-b")
    desk = open_desk(size, "fay")
    page = desk.page
    total = pending_count(page)
    count = page.get_by_test_id("filter-count")
    expect(count).to_have_text(f"{total} of {total} shown")
    expect(page.get_by_test_id("filter-clear")).to_be_disabled()

    # The risk badges: by HITL_TOOL_RISK's globs and names; none for a tool it does not name.
    expect(desk.card(delete).get_by_test_id("risk")).to_have_text("high risk")
    expect(desk.card(deploy).get_by_test_id("risk")).to_have_text("medium risk")
    expect(desk.card(email).get_by_test_id("risk")).to_have_text("low risk")
    expect(desk.card(read).get_by_test_id("risk")).to_be_hidden()
    # Moments through the shared formatter, as on every page.
    assert MOMENT.match(desk.card(read).get_by_test_id("expires-at").inner_text())
    assert MOMENT.match(desk.card(read).get_by_test_id("created-at").inner_text())

    page.get_by_test_id("filter-session").fill(session_id)
    expect(count).to_have_text(f"4 of {total} shown")
    page.get_by_test_id("filter-tool").select_option("delete_records")
    expect(count).to_have_text(f"1 of {total} shown")
    assert desk.shown() == [delete]
    assert "tool=delete_records" in page.url and f"session={session_id}" in page.url
    desk.assert_fits("filtered by tool")
    save_screenshot(page, f"hitl-desk-filtered-{size}")

    page.reload()
    expect(page.get_by_test_id("live-status")).to_have_text("live")
    expect(page.get_by_test_id("filter-tool")).to_have_value("delete_records")
    expect(page.get_by_test_id("filter-session")).to_have_value(session_id)
    expect(count).to_have_text(f"1 of {total} shown")
    assert desk.shown() == [delete]

    page.get_by_test_id("filter-tool").select_option("")
    page.get_by_test_id("filter-risk").select_option("medium")
    expect(count).to_have_text(f"1 of {total} shown")
    assert desk.shown() == [deploy]
    page.get_by_test_id("filter-risk").select_option("none")
    assert desk.shown() == [read]
    page.get_by_test_id("filter-risk").select_option("")
    page.get_by_test_id("filter-agent").select_option("agent-b")
    expect(count).to_have_text(f"2 of {total} shown")
    assert sorted(desk.shown()) == sorted([deploy, read])

    # A request that arrives live and does not match stays out of sight, but counts.
    ask("drop_cache", agent="agent-a")
    expect(count).to_have_text(f"2 of {total + 1} shown")
    assert sorted(desk.shown()) == sorted([deploy, read])

    page.get_by_test_id("filter-clear").click()
    expect(count).to_have_text(f"{total + 1} of {total + 1} shown")
    assert "agent=" not in page.url and "session=" not in page.url

    # A link with the filters in its query string opens filtered.
    page.goto(f"/hitl/?tool=delete_records&risk=high&session={session_id}")
    expect(count).to_have_text(f"1 of {total + 1} shown")
    assert desk.shown() == [delete]
    page.goto(f"/hitl/?tool=delete_records&risk=low&session={session_id}")
    expect(page.get_by_test_id("filter-empty")).to_be_visible()
    desk.assert_fits("nothing matches")
    desk.assert_no_errors()


@pytest.mark.parametrize("size", ["desk", "phone"])
def test_the_compact_view_fits_ten_requests_and_is_remembered(
    ask: Callable[..., str], open_desk: Callable[..., Desk], session_id: str, size: str
) -> None:
    for index in range(10):
        ask(["delete_records", "send_email", "deploy_api", "read_file", "wipe_disk"][index % 5])
    desk = open_desk(size, "cody", path=f"/hitl/?session={session_id}")
    page = desk.page
    expect(page.get_by_test_id("filter-count")).to_contain_text("10 of")
    toggle = page.get_by_test_id("density-toggle")
    expect(toggle).to_have_attribute("aria-pressed", "false")
    toggle.click()
    expect(toggle).to_have_attribute("aria-pressed", "true")
    page.reload()  # remembered by this browser
    expect(page.get_by_test_id("density-toggle")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#queue")).to_have_class(re.compile(r"\bcompact\b"))
    cards = page.locator("[data-testid=request]:visible")
    expect(cards).to_have_count(10)
    desk.assert_fits("compact")

    boxes = [cards.nth(i).bounding_box() for i in range(10)]
    assert all(box is not None for box in boxes)
    heights = [box["height"] for box in boxes if box]
    if size == "desk":
        assert max(heights) <= 50, f"a compact card is more than one line: {heights}"
        cards.first.evaluate("card => card.scrollIntoView({block: 'start'})")
        last = cards.nth(9).bounding_box()
        assert last is not None and last["y"] + last["height"] <= 900, "ten requests do not fit the screen"
    else:
        assert max(heights) <= 140, f"compact cards on a phone: {heights}"
        for i in range(10):  # every card's buttons can be reached: inside the screen's width
            approve = cards.nth(i).get_by_test_id("approve").bounding_box()
            reject = cards.nth(i).get_by_test_id("reject").bounding_box()
            assert approve and reject and reject["x"] + reject["width"] <= 390
    save_screenshot(page, f"hitl-desk-compact-{size}")

    # Still usable: Edit opens its editor on a line of its own.
    first = cards.first
    first.get_by_test_id("edit").click()
    expect(first.get_by_test_id("args-editor")).to_be_visible()
    expect(first.get_by_test_id("args-editor")).to_be_focused()
    desk.assert_fits("compact, editor open")
    first.locator("[data-panel=edit] [data-action=cancel]").click()

    page.get_by_test_id("density-toggle").click()
    expect(page.locator("#queue")).not_to_have_class(re.compile(r"\bcompact\b"))
    desk.assert_no_errors()


@pytest.mark.parametrize("size", ["desk", "phone"])
def test_keyboard_shortcuts_and_never_while_typing(
    live_app: LiveServer,
    agent_token: str,
    ask: Callable[..., str],
    open_desk: Callable[..., Desk],
    session_id: str,
    size: str,
) -> None:
    first = ask("read_file", arguments={"path": "/tmp/a"})
    second = ask("send_email", arguments={"to": "b@example.com"})
    third = ask("list_users", arguments={})
    desk = open_desk(size, "kim", path=f"/hitl/?session={session_id}")
    page = desk.page
    order = desk.shown()
    assert sorted(order) == sorted([first, second, third])

    page.keyboard.press("j")
    assert desk.focused() == order[0]
    page.keyboard.press("j")
    page.keyboard.press("j")
    assert desk.focused() == order[2]
    expect(desk.card(order[2])).to_be_in_viewport()
    page.keyboard.press("k")
    assert desk.focused() == order[1]
    expect(desk.card(order[1])).to_be_focused()
    expect(desk.card(order[1])).to_be_in_viewport()

    # With Alt or Ctrl held, nothing (Ctrl+A selects the page's text, and approves nothing).
    page.keyboard.press("Alt+j")
    page.keyboard.press("Control+a")
    assert desk.focused() == order[1]
    expect(desk.card(order[1])).to_be_visible()

    # ? opens the help, Esc closes it.
    page.keyboard.press("?")
    help_dialog = page.get_by_test_id("shortcuts-help")
    expect(help_dialog).to_be_visible()
    expect(help_dialog).to_contain_text("approve the selected request")
    save_screenshot(page, f"hitl-desk-shortcuts-{size}")
    page.keyboard.press("j")  # the dialog is in front: no shortcut behind it
    assert desk.focused() == order[1]
    page.keyboard.press("Escape")
    expect(help_dialog).to_be_hidden()

    # r: the reject flow, its comment focused; typing there is typing, not shortcuts.
    card = desk.card(order[1])
    page.keyboard.press("r")
    comment = card.get_by_test_id("reject-comment")
    expect(comment).to_be_visible()
    expect(comment).to_be_focused()
    page.keyboard.type("jak era?")
    expect(comment).to_have_value("jak era?")  # the first "r" was not typed in: it opened this
    assert desk.focused() == order[1]
    expect(card.locator("[data-panel=edit]")).to_be_hidden()
    expect(help_dialog).to_be_hidden()
    expect(card).to_be_visible()  # not approved by the "a"s
    card.locator("[data-panel=reject] [data-action=cancel]").click()

    # e: the JSON editor, open and focused, without a stray "e" in it.
    page.keyboard.press("e")
    editor = card.get_by_test_id("args-editor")
    expect(editor).to_be_focused()
    proposed = page.evaluate(
        "id => JSON.parse(document.getElementById('hitl-config').textContent).pending"
        ".find(a => a.call_id === id).arguments",
        order[1],
    )
    assert json.loads(editor.input_value()) == proposed
    page.keyboard.type("jk")  # typing in the editor moves nothing
    assert desk.focused() == order[1]
    card.locator("[data-panel=edit] [data-action=cancel]").click()

    # Also from a filter's box: typing "j" there filters, it does not move.
    page.get_by_test_id("filter-tool").focus()
    page.keyboard.press("j")
    assert desk.focused() == order[1]
    page.locator("body").click(position={"x": 5, "y": 5})

    # a: approves the selected request (not rated: no confirming step); the next one is selected.
    desk.card(order[1]).click(position={"x": 5, "y": 5})
    page.keyboard.press("a")
    expect(desk.card(order[1])).to_have_count(0)
    status, body = live_app.api("GET", f"/api/hitl/requests/{order[1]}/", agent_token)
    assert status == 200 and body["status"] == "approved" and body["decided_by"] == desk.person.username
    assert desk.focused() in (order[0], order[2])
    desk.assert_fits("after the shortcuts")
    desk.assert_no_errors()


def test_presence_shows_who_else_has_a_request_open(
    ask: Callable[..., str], open_desk: Callable[..., Desk], session_id: str
) -> None:
    one = ask("read_file", arguments={"path": "/etc/hosts"})
    two = ask("send_email", arguments={"to": "c@example.com"})
    alice = open_desk("desk", "alice", path=f"/hitl/?session={session_id}")
    bob = open_desk("phone", "bob", path=f"/hitl/?session={session_id}")
    order = alice.shown()

    alice.page.keyboard.press("j")  # alice selects the first request
    assert alice.focused() == order[0]
    seen_by_bob = bob.card(order[0]).get_by_test_id("presence")
    expect(seen_by_bob).to_have_text(f"Also viewing: {alice.person.username}")
    expect(alice.card(order[0]).get_by_test_id("presence")).to_be_hidden()  # never oneself

    bob.card(order[1]).get_by_test_id("edit").click()  # bob opens the second one's editor
    expect(alice.card(order[1]).get_by_test_id("presence")).to_have_text(
        f"Also viewing: {bob.person.username}"
    )
    save_screenshot(alice.page, "hitl-desk-presence-desk")
    save_screenshot(bob.page, "hitl-desk-presence-phone")

    alice.page.keyboard.press("j")  # alice moves on to the second: the first is no longer hers
    expect(seen_by_bob).to_be_hidden()
    expect(bob.card(order[1]).get_by_test_id("presence")).to_have_text(
        f"Also viewing: {alice.person.username}"
    )

    # One request's page counts as having it open.
    bob.page.goto(f"/hitl/requests/{order[0]}/")
    expect(bob.page.get_by_test_id("live-status")).to_have_text("live")
    expect(alice.card(order[0]).get_by_test_id("presence")).to_have_text(
        f"Also viewing: {bob.person.username}"
    )
    expect(alice.card(order[1]).get_by_test_id("presence")).to_be_hidden()  # bob's editor went with his page
    expect(bob.page.locator(f'[data-call-id="{order[0]}"]').get_by_test_id("presence")).to_be_hidden()
    assert {one, two} == set(order)
    alice.assert_no_errors()
    bob.assert_no_errors()


def test_a_high_risk_tool_needs_a_confirming_second_click(
    live_app: LiveServer,
    agent_token: str,
    start_agent: Callable[..., Agent],
    open_desk: Callable[..., Desk],
    session_id: str,
) -> None:
    call_id = f"risky-{uuid.uuid4().hex[:8]}"
    agent = start_agent(call_id, "delete_records")
    desk = open_desk("desk", "hana", path=f"/hitl/?session={session_id}")
    page = desk.page
    card = desk.card(call_id)
    expect(card.get_by_test_id("risk")).to_have_text("high risk")
    approve = card.get_by_test_id("approve")

    approve.click()  # one click: the button asks to be confirmed, and nothing is sent
    expect(approve).to_have_text("Confirm approve delete_records")
    save_screenshot(page, "hitl-desk-high-risk-confirm-desk")
    page.wait_for_timeout(500)
    status, body = live_app.api("GET", f"/api/hitl/requests/{call_id}/", agent_token)
    assert status == 200 and body["status"] == "pending" and body["risk"] == "high"
    assert agent.process.poll() is None  # still waiting

    approve.click()  # the confirmation sends it
    expect(card).to_have_count(0)
    decision = agent.decision()
    assert decision["status"] == "approved"
    assert decision["decided_by"] == desk.person.username

    # Unconfirmed, the button goes back by itself after a few seconds.
    other = f"risky-{uuid.uuid4().hex[:8]}"
    waiting = start_agent(other, "delete_records")
    approve = desk.card(other).get_by_test_id("approve")
    approve.click()
    expect(approve).to_have_text("Confirm approve delete_records")
    expect(approve).to_have_text("Approve", timeout=8_000)
    status, body = live_app.api("GET", f"/api/hitl/requests/{other}/", agent_token)
    assert body["status"] == "pending"
    waiting.stop()
    desk.assert_no_errors()


@pytest.mark.parametrize("size", ["desk", "phone"])
def test_a_high_risk_edit_and_the_a_key_go_through_the_confirming_step(
    live_app: LiveServer,
    agent_token: str,
    start_agent: Callable[..., Agent],
    open_desk: Callable[..., Desk],
    session_id: str,
    size: str,
) -> None:
    # wipe_disk is rated by its schema's x-risk (HITL_TOOL_RISK does not name it).
    edited_call = f"wipe-{uuid.uuid4().hex[:8]}"
    edited_agent = start_agent(edited_call, "wipe_disk")
    keyed_call = f"del-{uuid.uuid4().hex[:8]}"
    keyed_agent = start_agent(keyed_call, "delete_records")
    desk = open_desk(size, "ivo", path=f"/hitl/?session={session_id}")
    page = desk.page
    card = desk.card(edited_call)
    expect(card.get_by_test_id("risk")).to_have_text("high risk")

    card.get_by_test_id("edit").click()
    editor = card.get_by_test_id("args-editor")
    editor.fill(json.dumps({"table": "sessions"}))
    send = card.get_by_test_id("send-edit")
    expect(send).to_be_enabled()
    send.click()
    expect(send).to_have_text("Confirm approve wipe_disk with these arguments")
    page.wait_for_timeout(300)
    status, body = live_app.api("GET", f"/api/hitl/requests/{edited_call}/", agent_token)
    assert body["status"] == "pending"
    desk.assert_fits("confirming an edit")
    send.click()
    expect(card).to_have_count(0)
    decision = edited_agent.decision()
    assert decision["status"] == "edited" and decision["arguments"] == {"table": "sessions"}

    # The keyboard: a selects... a asks to confirm, a again approves.
    page.locator("body").click(position={"x": 5, "y": 5})
    page.keyboard.press("j")
    assert desk.focused() == keyed_call
    page.keyboard.press("a")
    expect(desk.card(keyed_call).get_by_test_id("approve")).to_have_text("Confirm approve delete_records")
    page.wait_for_timeout(300)
    assert keyed_agent.process.poll() is None
    page.keyboard.press("a")
    expect(desk.card(keyed_call)).to_have_count(0)
    assert keyed_agent.decision()["status"] == "approved"
    desk.assert_no_errors()


def test_the_request_page_writes_moments_one_way_and_signing_out_says_so(
    ask: Callable[..., str], open_desk: Callable[..., Desk], live_app: LiveServer
) -> None:
    call_id = ask("execute_command", arguments={"cmd": "ls"})
    desk = open_desk("desk", "lena", path=f"/hitl/requests/{call_id}/")
    page = desk.page
    expect(page.get_by_test_id("request-status")).to_have_text("pending")
    page.get_by_test_id("reject").click()
    page.get_by_test_id("reject-comment").fill("not today")
    page.get_by_test_id("send-reject").click()
    expect(page.get_by_test_id("request-status")).to_have_text("rejected")
    expect(page.get_by_test_id("request-decided-by")).to_have_text(f"{desk.person.username} (page)")
    assert MOMENT.match(page.get_by_test_id("request-decided-at").inner_text())
    for moment in page.get_by_test_id("history-item").locator("time").all_inner_texts():
        assert MOMENT.match(moment), moment

    page.locator(".signout button").click()
    expect(page).to_have_url(re.compile(r"/admin/login/\?next=/$"))
    expect(page.locator(".messagelist")).to_have_text("You have signed out.")
    desk.assert_no_errors()
