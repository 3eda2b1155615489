"""Issue 14, the admin at a desk (1400x900) and on a phone (390x844) in Chromium: the lists of approval
requests, stored events and the audit trail fit a desk's screen without a horizontal scroll; a pending
request's Decide panel is inside the viewport at both sizes, checks the JSON as it is typed, shows the
difference, and an approve-with-edit through it reaches the request. No console error anywhere.
Screenshots go to test-output/browser/."""

from __future__ import annotations

import json
import re
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from tests.e2e.conftest import REQUIRE_BROWSER, UI_TIMEOUT_MS, LiveServer, save_screenshot

if not REQUIRE_BROWSER:
    pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
from playwright.sync_api import Page, expect  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.timeout(180)
expect.set_options(timeout=UI_TIMEOUT_MS)

SIZES: dict[str, dict[str, Any]] = {
    "desk": {"viewport": {"width": 1400, "height": 900}},
    "phone": {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True},
}
LISTS = {
    "approval-requests": "/admin/hitl/approvalrequest/",
    "events": "/admin/events/storedevent/",
    "audit-trail": "/admin/audit/auditentry/",
}
# How far the page, and the list's own scrolling box, are wider than what shows.
OVERFLOW = """() => {
  const page = document.documentElement.scrollWidth - document.documentElement.clientWidth;
  const box = document.querySelector("#changelist .results");
  return [page, box ? box.scrollWidth - box.clientWidth : 0];
}"""


def ask(live_app: LiveServer, token: str, call_id: str, tool: str, arguments: dict) -> None:
    status, body = live_app.api(
        "POST",
        "/api/hitl/requests/",
        token,
        {
            "call_id": call_id,
            "session_id": f"session-{uuid.uuid4().hex}",
            "tool_name": tool,
            "agent": "billing-agent",
            "arguments": arguments,
            "reason": "the customer asked for it " * 3,
            "timeout_s": 900,
        },
    )
    assert status == 201, body


def sign_in(page: Page, username: str, password: str) -> None:
    page.goto("/admin/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.locator("#login-form [type=submit]").click()
    expect(page).to_have_url(re.compile(r"/admin/$"))


@pytest.mark.parametrize("size", ["desk", "phone"])
def test_admin_lists_fit_and_the_decide_panel_approves_with_an_edit(
    live_app: LiveServer, new_page: Callable[..., Page], size: str
) -> None:
    person = live_app.create_operator(f"desk-{size}")
    live_app.manage("create_operator", person.username, "--group", "auditors")  # the trail and its export
    token = live_app.create_agent_token(f"agent-{size}")
    run = uuid.uuid4().hex[:8]
    for n in range(6):
        ask(live_app, token, f"sim-{run}-{n}-{uuid.uuid4().hex}", "refund_payment", {"amount": n})
    call_id = f"desk-{run}-{uuid.uuid4().hex}"
    ask(live_app, token, call_id, "refund_payment", {"amount": 120, "currency": "EUR", "note": "x" * 60})

    page = new_page(size, **SIZES[size])
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    sign_in(page, person.username, person.password)

    for name, url in LISTS.items():
        page.goto(url)
        expect(page.locator("#result_list tbody tr").first).to_be_visible()
        page_overflow, list_overflow = page.evaluate(OVERFLOW)
        if size == "desk":
            too_wide = f"{name}: the page {page_overflow} px, the list {list_overflow} px too wide"
            assert page_overflow <= 0 and list_overflow <= 0, too_wide
        save_screenshot(page, f"admin-{name}-{size}")

    # The pending request's change page, found by the beginning of its call id.
    page.goto(f"/admin/hitl/approvalrequest/?q={call_id[:14]}")
    page.locator("#result_list tbody tr th a").first.click()
    expect(page).to_have_url(re.compile(r"/admin/hitl/approvalrequest/\d+/change/"))
    panel = page.get_by_test_id("decide-panel")
    expect(panel).to_be_visible()
    width = SIZES[size]["viewport"]["width"]
    for locator in (panel, page.locator("#id_arguments"), page.locator(".hitl-decide-buttons")):
        box = locator.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width, (box, width)
        assert box["width"] >= min(300, width - 40), box  # a real column, not a sliver
    assert page.evaluate(OVERFLOW)[0] <= 0

    editor = page.locator("#id_arguments")
    editor.fill('{"amount": 120, "currency": ')
    expect(page.get_by_test_id("args-error")).to_contain_text("not valid JSON")
    expect(page.get_by_test_id("approve-edit")).to_be_disabled()
    edited = {"amount": 100, "currency": "EUR", "note": "capped by the operator"}
    editor.fill(json.dumps(edited))
    expect(page.get_by_test_id("args-error")).to_have_text("")
    expect(page.get_by_test_id("args-diff")).to_contain_text("capped by the operator")
    expect(page.get_by_test_id("approve-edit")).to_be_enabled()
    page.locator("#id_comment").fill("refund capped")
    panel.scroll_into_view_if_needed()
    save_screenshot(page, f"admin-decide-panel-{size}")

    page.get_by_test_id("approve-edit").click()
    expect(page.locator("#hitl-diff")).to_contain_text("capped by the operator")
    page.get_by_role("button", name="Approve with these edits").click()
    expect(page).to_have_url(re.compile(r"/admin/hitl/approvalrequest/(\?.*)?$"))

    status, body = live_app.api("GET", f"/api/hitl/requests/{call_id}/", token)
    assert status == 200, body
    assert (body["status"], body["modified_args"], body["decided_by"]) == ("edited", edited, person.username)
    assert body["comment"] == "refund capped"
    assert errors == [], errors
