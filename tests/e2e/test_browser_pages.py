"""The pages no other browser test walks, in Chromium at a desk's and a phone's size: the live feed (an
event published over the API appears, its time written with the zone), the notification preferences,
and the admin's trace of a 21-event causation chain (depth 20). Each fits its width (no horizontal
overflow) and logs no console error. Screenshots go to test-output/browser/."""

from __future__ import annotations

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

pytestmark = pytest.mark.timeout(120)
expect.set_options(timeout=UI_TIMEOUT_MS)

SIZES: dict[str, dict[str, Any]] = {
    "desk": {"viewport": {"width": 1400, "height": 900}},
    "phone": {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True},
}
OVERFLOW = "document.documentElement.scrollWidth - document.documentElement.clientWidth"


def sign_in(page: Page, path: str, username: str, password: str) -> None:
    page.goto(path)
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.locator("#login-form [type=submit]").click()


def watch_errors(page: Page) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


def fits(page: Page, what: str) -> None:
    overflow = page.evaluate(OVERFLOW)
    assert overflow <= 0, f"{what}: {overflow} px of horizontal overflow"


@pytest.mark.parametrize("size", ["desk", "phone"])
def test_the_live_feed_fits_and_shows_a_new_event_with_its_time_zone(
    live_app: LiveServer, new_page: Callable[..., Page], size: str
) -> None:
    person = live_app.create_operator(f"feed-{size}")
    token = live_app.create_agent_token(f"agent-feed-{size}")
    page = new_page(size, **SIZES[size])
    errors = watch_errors(page)
    sign_in(page, "/admin/login/?next=/events/live/", person.username, person.password)
    expect(page).to_have_url(re.compile(r"/events/live/$"))
    expect(page.get_by_test_id("live-status")).to_have_text("live")

    session = f"feed-{uuid.uuid4().hex[:12]}"
    status, _ = live_app.api(
        "POST",
        "/api/events/",
        token,
        {
            "event_type": "message_added",
            "session_id": session,
            "data": {"role": "user", "content": "hello " * 40},
        },
    )
    assert status == 201
    row = page.get_by_test_id("feed-event").filter(has_text=session).first
    expect(row).to_be_visible()  # live, no reload
    expect(row.locator("[data-field=clock]")).to_have_text(re.compile(r"^\d\d:\d\d:\d\d\.\d{3} UTC$"))
    fits(page, f"/events/live/ at {size}")
    save_screenshot(page, f"pages-live-feed-{size}")
    assert errors == [], errors


@pytest.mark.parametrize("size", ["desk", "phone"])
def test_the_notification_preferences_fit(
    live_app: LiveServer, new_page: Callable[..., Page], size: str
) -> None:
    person = live_app.create_operator(f"prefs-{size}")
    page = new_page(size, **SIZES[size])
    errors = watch_errors(page)
    sign_in(page, "/admin/login/?next=/hitl/notifications/", person.username, person.password)
    expect(page).to_have_url(re.compile(r"/hitl/notifications/$"))
    expect(page.locator("form").first).to_be_visible()
    fits(page, f"/hitl/notifications/ at {size}")
    save_screenshot(page, f"pages-notifications-{size}")
    assert errors == [], errors


@pytest.mark.parametrize("size", ["desk", "phone"])
def test_a_trace_twenty_causes_deep_stays_within_the_page(
    live_app: LiveServer, new_page: Callable[..., Page], size: str
) -> None:
    person = live_app.create_operator(f"trace-{size}")
    token = live_app.create_agent_token(f"agent-trace-{size}")
    correlation = uuid.uuid4().hex
    events = [str(uuid.uuid4()) for _ in range(21)]
    chain = [
        {
            "event_id": event_id,
            "event_type": "tool_execution_completed",
            "session_id": f"trace-{size}",
            "correlation_id": correlation,
            "causation_id": events[index - 1] if index else None,
            "data": {"tool_name": f"step_{index}", "call_id": f"c-{index}", "result": "ok " * 30},
        }
        for index, event_id in enumerate(events)
    ]
    status, body = live_app.api("POST", "/api/events/", token, chain)
    assert status == 201, body

    page = new_page(size, **SIZES[size])
    errors = watch_errors(page)
    sign_in(
        page,
        f"/admin/events/storedevent/trace/?correlation_id={correlation}",
        person.username,
        person.password,
    )
    rows = page.locator("tr.events-step")
    expect(rows).to_have_count(21)
    assert rows.last.get_attribute("data-depth") == "20"
    expect(rows.last.locator(".events-depth")).to_have_text("20")  # the depth as a number, not an indent
    save_screenshot(page, f"pages-trace-depth-20-{size}")
    fits(page, f"the trace at {size}")
    if size == "desk":
        # The whole table within the page at a desk's width (it was 1,976 px wide with a staircase).
        width = page.evaluate("document.querySelector('#result_list').getBoundingClientRect().right")
        assert width <= 1400, f"the trace table ends at {width} px"
    assert errors == [], errors
