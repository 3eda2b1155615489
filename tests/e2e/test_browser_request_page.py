"""One request's page (/hitl/requests/<call_id>/, where e-mails and Slack link) in Chromium at a desk's
and a phone's size: it fits the screen, has no console error, decides, and then shows the outcome and
its history without anyone reloading by hand. Screenshots go to test-output/browser/."""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING

import pytest

from tests.e2e.conftest import REQUIRE_BROWSER, UI_TIMEOUT_MS, LiveServer, save_screenshot

if not REQUIRE_BROWSER:
    pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
from playwright.sync_api import Page, expect  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.timeout(120)
expect.set_options(timeout=UI_TIMEOUT_MS)

SIZES = {
    "desk": {"viewport": {"width": 1400, "height": 900}},
    "phone": {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True},
}


@pytest.mark.parametrize("size", ["desk", "phone"])
def test_the_request_page_fits_decides_and_then_shows_the_outcome_and_history(
    live_app: LiveServer, new_page: Callable[..., Page], size: str
) -> None:
    person = live_app.create_operator(f"rita-{size}")
    token = live_app.create_agent_token(f"agent-{size}")
    call_id = f"page-{uuid.uuid4().hex[:10]}"
    status, _ = live_app.api(
        "POST",
        "/api/hitl/requests/",
        token,
        {"call_id": call_id, "session_id": "s-page", "tool_name": "send_email", "arguments": {"to": "x"}},
    )
    assert status == 201
    page = new_page(size, **SIZES[size])
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.goto(f"/hitl/requests/{call_id}/")
    page.fill("#id_username", person.username)
    page.fill("#id_password", person.password)
    page.locator("#login-form [type=submit]").click()
    expect(page).to_have_url(re.compile(rf"/hitl/requests/{call_id}/$"))
    expect(page.get_by_test_id("live-status")).to_have_text("live")
    expect(page.get_by_test_id("request-status")).to_have_text("pending")
    expect(page.locator(f'[data-testid=request][data-call-id="{call_id}"]')).to_be_visible()
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"{overflow} px of horizontal overflow at {size} size"
    save_screenshot(page, f"hitl-request-page-{size}")

    page.get_by_test_id("approve").click()
    expect(page.get_by_test_id("request-status")).to_have_text("approved")  # drawn again, by itself
    expect(page.get_by_test_id("request-decided-by")).to_contain_text(person.username)
    kinds = page.get_by_test_id("history-item").evaluate_all("items => items.map(i => i.dataset.eventType)")
    assert kinds == ["tool_approval_required", "hitl_decision_made"]
    save_screenshot(page, f"hitl-request-page-decided-{size}")
    assert errors == [], errors


# The browser's notification and audio, recorded instead of shown and played (the permission flow mocked).
FAKE_ALERTS = """
window.alertsSeen = {notifications: [], tones: 0, asked: 0};
class FakeNotification {
  constructor(title, options) { window.alertsSeen.notifications.push({title, body: options.body}); }
  close() {}
}
FakeNotification.permission = "default";
FakeNotification.requestPermission = async () => {
  window.alertsSeen.asked += 1;
  FakeNotification.permission = "granted";
  return "granted";
};
window.Notification = FakeNotification;
class FakeAudio {
  constructor() { this.currentTime = 0; this.destination = {}; }
  createOscillator() {
    return {frequency: {}, connect: (g) => g, start: () => { window.alertsSeen.tones += 1; }, stop() {}};
  }
  createGain() {
    return {gain: {setValueAtTime() {}, exponentialRampToValueAtTime() {}}, connect: (d) => d};
  }
}
window.AudioContext = FakeAudio;
Object.defineProperty(document, "hidden", {get: () => true});
"""


def test_opt_in_alerts_ask_permission_then_sound_and_notify_for_a_new_request(
    live_app: LiveServer, new_page: Callable[..., Page]
) -> None:
    person = live_app.create_operator("nina")
    token = live_app.create_agent_token("agent-alerts")
    page = new_page("desk", **SIZES["desk"])
    page.add_init_script(FAKE_ALERTS)
    page.goto("/hitl/")
    page.fill("#id_username", person.username)
    page.fill("#id_password", person.password)
    page.locator("#login-form [type=submit]").click()
    expect(page.get_by_test_id("live-status")).to_have_text("live")
    toggle = page.get_by_test_id("alerts-toggle")
    expect(toggle).to_have_text("Alerts off")
    toggle.click()
    expect(toggle).to_have_attribute("aria-pressed", "true")
    assert page.evaluate("window.alertsSeen.asked") == 1

    call_id = f"alert-{uuid.uuid4().hex[:10]}"
    status, _ = live_app.api(
        "POST",
        "/api/hitl/requests/",
        token,
        {
            "call_id": call_id,
            "session_id": "s",
            "tool_name": "drop_table",
            "arguments": {},
            "reason": "cleanup",
        },
    )
    assert status == 201
    expect(page.locator(f'[data-call-id="{call_id}"]')).to_be_visible()
    page.wait_for_function("window.alertsSeen.notifications.length >= 1")
    seen = page.evaluate("window.alertsSeen")
    assert seen["tones"] >= 1
    assert seen["notifications"][0]["title"] == "Approval needed: drop_table"
    assert "cleanup" in seen["notifications"][0]["body"]
    page.reload()  # remembered by this browser
    expect(page.get_by_test_id("alerts-toggle")).to_have_text("Alerts on")
