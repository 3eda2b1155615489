"""Fixtures of the browser tests: the app under Daphne over a database of its own, people who sign in,
and Debian's Chromium driven by Playwright.

The browser tests skip when /usr/bin/chromium or Playwright is missing, unless REQUIRE_BROWSER=1 (CI)
says they must run. Playwright never downloads a browser of its own here: it drives the system's
Chromium. Screenshots go to $TEST_OUTPUT_DIR (default: test-output/ at the repository's root).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, Playwright

ROOT = Path(__file__).resolve().parent.parent.parent
CHROMIUM = "/usr/bin/chromium"
# The developers' guide: headless, no sandbox (containers), and nothing that reaches the network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REQUIRE_BROWSER = os.environ.get("REQUIRE_BROWSER", "") == "1"
# Bounded waits: what the page shows live must show within this, or the test fails.
UI_TIMEOUT_MS = 10_000
SERVER_START_S = 30.0


def output_dir() -> Path:
    """Where the browser tests keep their screenshots (gitignored)."""
    path = Path(os.environ.get("TEST_OUTPUT_DIR") or ROOT / "test-output") / "browser"
    path.mkdir(parents=True, exist_ok=True)
    return path


# Screenshots written in this run, listed at the end of pytest's report.
SCREENSHOTS: list[Path] = []


def save_screenshot(page: Page, name: str) -> Path:
    """A full-page screenshot kept in output_dir() as NAME.png; its path is listed in the report."""
    path = output_dir() / f"{name}.png"
    page.evaluate("window.scrollTo(0, 0)")  # else the sticky top bar is drawn over the middle
    page.screenshot(path=str(path), full_page=True)
    SCREENSHOTS.append(path)
    return path


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SCREENSHOTS:
        terminalreporter.write_sep("-", "browser screenshots")
        for path in SCREENSHOTS:
            terminalreporter.write_line(str(path))


def _missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install -e '.[dev]')"
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    return None


def need_browser() -> None:
    """Skip the calling test (or fail it, under REQUIRE_BROWSER=1) when no browser can run."""
    reason = _missing_browser()
    if reason is None:
        return
    if REQUIRE_BROWSER:
        pytest.fail(f"REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


# The server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Operator:
    username: str
    password: str


class LiveServer:
    """Daphne serving the project on a free port of 127.0.0.1, over a fresh SQLite database in `home`
    (its VAR_DIR: the secret key, the database), with Daphne's output in home/daphne.log."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = home / "daphne.log"
        self.env = {
            **os.environ,
            "VAR_DIR": str(home),
            "DATABASE_URL": f"sqlite:///{home / 'db.sqlite3'}",
            "DEBUG": "false",
            "ALLOWED_HOSTS": "127.0.0.1",
            "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1",
        }
        self.manage("migrate", "--noinput", "-v0")
        self.process: subprocess.Popen[bytes] | None = None

    def manage(self, *args: str) -> str:
        """Run a management command against the server's database; its output."""
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"manage.py {' '.join(args)}: {result.stderr}"
        return result.stdout

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port)]
                + ["eventbus_project.asgi:application"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + SERVER_START_S
        while not self._healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Daphne did not start on port {self.port}:\n{self.log_tail()}")
            time.sleep(0.1)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)  # Daphne drains the bus and stops
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # People and agents

    def create_operator(self, username: str, group: str = "operators") -> Operator:
        """A staff member of `group` with a password, through `manage.py create_operator`."""
        output = self.manage("create_operator", username, "--group", group)
        found = re.search(r"with password: (\S+)", output)
        assert found, f"create_operator printed no password: {output!r}"
        return Operator(username=username, password=found.group(1))

    def create_agent_token(self, username: str) -> str:
        """An API token of the agents group (`manage.py create_api_token USER --group agents`)."""
        return self.manage("create_api_token", username, "--group", "agents").strip().splitlines()[-1]

    def api(self, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
        """Call the JSON API with a Bearer token; (status, decoded body)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")


@pytest.fixture(scope="module")
def live_app() -> Iterator[LiveServer]:
    """The app under Daphne for one test module (each test uses its own call ids and users)."""
    need_browser()
    with tempfile.TemporaryDirectory(prefix="e2e-browser-") as home:
        server = LiveServer(Path(home))
        server.start()
        try:
            yield server
        finally:
            server.stop()
            if os.environ.get("E2E_SHOW_SERVER_LOG"):
                print(f"== Daphne's log\n{server.log_tail(200)}")


@pytest.fixture
def own_app(tmp_path: Path) -> Iterator[LiveServer]:
    """The app under Daphne for one test alone (one that stops and restarts it)."""
    need_browser()
    server = LiveServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# The browser


@pytest.fixture(scope="module")
def playwright_driver() -> Iterator[Playwright]:
    """Playwright's driver, for one module: torn down before other modules' asyncio tests run."""
    need_browser()
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright_driver: Playwright) -> Iterator[Browser]:
    """Debian's Chromium (never a browser Playwright downloads), with the developers' guide's flags."""
    chromium = playwright_driver.chromium.launch(
        executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=30_000
    )
    try:
        yield chromium
    finally:
        chromium.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the test, so fixtures can tell whether it failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def new_page(
    request: pytest.FixtureRequest, browser: Browser, live_app: LiveServer
) -> Iterator[Callable[..., Page]]:
    """new_page(name, **context_options): a page in a browser context of its own (its own cookies),
    with the live app as base URL unless base_url says otherwise. A failed test leaves a screenshot of
    every such page."""
    contexts: list[tuple[str, BrowserContext, Page]] = []

    def make(name: str, **options: Any) -> Page:
        context = browser.new_context(**{"base_url": live_app.url, **options})
        context.set_default_timeout(UI_TIMEOUT_MS)
        page = context.new_page()
        contexts.append((name, context, page))
        return page

    yield make
    report = getattr(request.node, "report_call", None)
    for name, context, page in contexts:
        if report is not None and report.failed and not page.is_closed():
            try:
                save_screenshot(page, f"FAILED-{request.node.name}-{name}")
            except Exception as error:  # a crashed page must not hide the test's own failure
                print(f"no screenshot of {name}'s page: {error}")
        context.close()
    if report is not None and report.failed:
        print(f"== Daphne's log (last lines)\n{live_app.log_tail()}")
