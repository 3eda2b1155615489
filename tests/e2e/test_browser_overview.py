"""`/` (the operators' overview) in Chromium at a desk's and a phone's size: it fits, has no console
error, and its figures follow a request as it arrives; /api/docs/ with every host but 127.0.0.1 blocked;
DRF's browsable API for a signed-in browser. Screenshots go to test-output/browser/."""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING

import pytest

from tests.e2e.conftest import REQUIRE_BROWSER, UI_TIMEOUT_MS, LiveServer, save_screenshot

if not REQUIRE_BROWSER:
    pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
from playwright.sync_api import Page, Route, expect  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.timeout(120)
expect.set_options(timeout=UI_TIMEOUT_MS)

SIZES = {
    "desk": {"viewport": {"width": 1400, "height": 900}},
    "phone": {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True},
}


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


@pytest.mark.parametrize("size", ["desk", "phone"])
def test_overview_fits_and_follows_a_new_request(
    live_app: LiveServer, new_page: Callable[..., Page], size: str
) -> None:
    person = live_app.create_operator(f"olga-{size}")
    token = live_app.create_agent_token(f"agent-ov-{size}")
    page = new_page(size, **SIZES[size])
    errors = watch_errors(page)
    sign_in(page, "/", person.username, person.password)
    expect(page).to_have_url(re.compile(r"/$"))
    expect(page.get_by_test_id("live-status")).to_have_text("live")
    expect(page.get_by_test_id("overview-updated")).to_have_text(
        re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$")
    )
    before = int(page.get_by_test_id("pending").inner_text())
    events_before = int(page.get_by_test_id("events-hour").inner_text())
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"{overflow} px of horizontal overflow at {size} size"
    save_screenshot(page, f"overview-{size}")

    call_id = f"ov-{uuid.uuid4().hex[:10]}"
    status, _ = live_app.api(
        "POST",
        "/api/hitl/requests/",
        token,
        {"call_id": call_id, "session_id": "s-ov", "tool_name": "send_email", "arguments": {"to": "x"}},
    )
    assert status == 201
    expect(page.get_by_test_id("pending")).to_have_text(str(before + 1))  # no reload: over /ws/hitl/
    assert int(page.get_by_test_id("events-hour").inner_text()) > events_before
    save_screenshot(page, f"overview-after-request-{size}")
    assert errors == [], errors


def test_overview_api_docs_load_with_no_internet(live_app: LiveServer, new_page: Callable[..., Page]) -> None:
    page = new_page("docs", viewport={"width": 1400, "height": 900})
    errors = watch_errors(page)
    elsewhere: list[str] = []

    def only_here(route: Route) -> None:
        if re.match(r"^(http|ws)s?://127\.0\.0\.1[:/]", route.request.url):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    page.route("**/*", only_here)
    page.goto("/api/docs/")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Agent event bus API")
    expect(page.locator(".opblock").first).to_be_visible()
    save_screenshot(page, "overview-api-docs-offline")
    assert elsewhere == [], elsewhere
    assert errors == [], errors


def test_overview_browsable_api_for_a_signed_in_browser(
    live_app: LiveServer, new_page: Callable[..., Page]
) -> None:
    person = live_app.create_operator("bruno-browsable")
    page = new_page("browsable", viewport={"width": 1400, "height": 900})
    errors = watch_errors(page)
    sign_in(page, "/admin/login/?next=/api/hitl/requests/", person.username, person.password)
    expect(page).to_have_url(re.compile(r"/api/hitl/requests/$"))
    expect(page.locator(".response-info")).to_contain_text('"results"')
    expect(page.locator(".navbar-brand")).to_have_text("Agent event bus")
    save_screenshot(page, "overview-browsable-api")
    assert errors == [], errors
    status, body = live_app.api("GET", "/api/hitl/requests/", live_app.create_agent_token("agent-browsable"))
    assert status == 200 and isinstance(body, dict)  # Bearer clients: JSON, as before
