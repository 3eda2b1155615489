"""The database goes away and comes back: 503 `store_unavailable` quickly meanwhile, service at once after.

One scenario, run once for the module against a private PostgreSQL (initdb into a temporary directory,
on a free port: the shared one is never stopped) and Daphne serving the project over it: requests
before the outage, `pg_ctl stop -m immediate` (a crash: every connection the server holds breaks), the
requests of every kind during the outage, the database started again, and the same requests until they
succeed. Each test checks one rule against what the scenario recorded. A test that needs no database
(the long-poll's path checks) calls the ASGI app in-process.
"""

from __future__ import annotations

import asyncio
import glob
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.db import IntegrityError, InterfaceError, OperationalError
from psycopg_pool import PoolTimeout

from tests.conftest import REQUIRE_SERVICES

ROOT = Path(__file__).resolve().parent.parent.parent
OUTAGE_S = 6.0  # how long the database stays down
FAST_503_S = 3.0  # an API answers 503 within this while the database is down
HEALTHZ_S = 2.0  # /healthz answers 503 within this (the contract)
RECOVERY_S = 2.0  # service is back within this of the database accepting connections again


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


class PrivatePostgres:
    """A PostgreSQL of this test's own (trust authentication, 127.0.0.1 only), stopped and started at will.

    Run as the `postgres` user when the tests run as root (initdb refuses root)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.home = Path(tempfile.mkdtemp(prefix="pg-outage-"))
        self.data = self.home / "data"
        self.log = self.home / "postgres.log"
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.home, "postgres", "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")

    def _run(self, program: str, *args: str, timeout: float = 60) -> None:
        command = [*self.as_user, str(self.bindir / program), *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"{program} {' '.join(args)}: {result.stdout}{result.stderr}"

    def start(self) -> None:
        # fsync off: the machine does not crash, only the server stops (its writes are in the OS's cache).
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.home} -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self, mode: str = "immediate") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def url(self, name: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        try:
            self.stop()
        except AssertionError:
            pass  # not running
        shutil.rmtree(self.home, ignore_errors=True)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any
    seconds: float


def call(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str = "",
    cookies: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 15,
) -> Answer:
    """One HTTP request; its status, headers (lower-case names), body (JSON when it is JSON) and duration."""
    client = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    sent = dict(headers or {})
    if body is not None and not isinstance(body, bytes | str):
        body = json.dumps(body)
        sent.setdefault("Content-Type", "application/json")
    if token:
        sent["Authorization"] = f"Bearer {token}"
    if cookies:
        sent["Cookie"] = "; ".join(f"{name}={value}" for name, value in cookies.items())
    started = time.monotonic()
    try:
        client.request(method, path, body=body, headers=sent)
        response = client.getresponse()
        raw = response.read()
        seconds = time.monotonic() - started
        answer_headers = {name.lower(): value for name, value in response.getheaders()}
        for name, value in response.getheaders():
            if name.lower() == "set-cookie":  # several: keep them all
                answer_headers.setdefault("set-cookie-all", "")
                answer_headers["set-cookie-all"] += value + "\n"
        try:
            decoded: Any = json.loads(raw)
        except ValueError:
            decoded = raw.decode("utf-8", "replace")
        return Answer(response.status, answer_headers, decoded, seconds)
    finally:
        client.close()


def _cookies(answer: Answer) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    for line in answer.headers.get("set-cookie-all", "").splitlines():
        jar.load(line)
    return {name: morsel.value for name, morsel in jar.items()}


class Daphne:
    """The project under Daphne on a free port, over `database_url`; its output in `log`."""

    def __init__(self, database_url: str, home: Path) -> None:
        self.port = free_port()
        self.log = home / "daphne.log"
        self.env = {**os.environ, "DATABASE_URL": database_url, "VAR_DIR": str(home), "DEBUG": "false"}
        self.env["ALLOWED_HOSTS"] = "127.0.0.1"
        self.process: subprocess.Popen[bytes] | None = None

    def manage(self, *args: str) -> str:
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
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port)]
                + ["eventbus_project.asgi:application"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                if call(self.port, "GET", "/healthz", timeout=3).status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"Daphne did not start:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def log_tail(self, lines: int = 80) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class Outage:
    """What the scenario saw: the answers during the outage, and after, by name."""

    during: dict[str, Answer] = field(default_factory=dict)
    after: dict[str, Answer] = field(default_factory=dict)
    # Seconds from the database accepting connections again to each first success.
    recovered_in: dict[str, float] = field(default_factory=dict)
    refused_after: list[str] = field(default_factory=list)  # answers after it that were not successes
    acknowledged: list[str] = field(default_factory=list)  # event ids that got a 201
    stored: set[str] = field(default_factory=set)  # event ids stored, read after the scenario
    server_log: str = ""

    def timings(self) -> str:
        lines = [f"during, {name}: {a.status} in {a.seconds:.2f}s" for name, a in self.during.items()]
        lines += [f"after, {name}: first success {s:.2f}s after" for name, s in self.recovered_in.items()]
        lines += [f"after, refused: {refused}" for refused in self.refused_after]
        return "\n".join(lines)


def _event(session_id: str) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "event_type": "agent_switched",
        "session_id": session_id,
        "data": {"from_agent": "triage", "to_agent": "billing", "reason": "outage test"},
    }


def _ask(call_id: str) -> dict[str, Any]:
    return {
        "session_id": "s-outage",
        "call_id": call_id,
        "tool_name": "refund_payment",
        "arguments": {"amount": 120},
        "reason": "customer asked",
        "agent": "billing",
        "timeout_s": 600,
    }


def _sign_in(port: int, username: str, password: str) -> dict[str, str]:
    """The session cookies of `username`, signed in through the admin's form."""
    page = call(port, "GET", "/admin/login/")
    cookies = _cookies(page)
    found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', str(page.body))
    assert found, "no CSRF token on the sign-in page"
    form = f"username={username}&password={password}&csrfmiddlewaretoken={found.group(1)}&next=/admin/"
    signed_in = call(
        port,
        "POST",
        "/admin/login/",
        form,
        cookies=cookies,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert signed_in.status == 302, (signed_in.status, signed_in.body)
    cookies.update(_cookies(signed_in))
    assert "sessionid" in cookies, cookies
    return cookies


def _until(outage: Outage, name: str, attempt: Any, succeeded: Any) -> None:
    """Repeat `attempt()` until `succeeded(answer)` (or for RECOVERY_S + 3 s); record the answers."""
    started = time.monotonic()
    while True:
        answer = attempt()
        elapsed = time.monotonic() - started
        if succeeded(answer) or elapsed > RECOVERY_S + 3:
            outage.after[name] = answer
            outage.recovered_in[name] = elapsed
            return
        outage.refused_after.append(f"{name}: {answer.status} {answer.body!r}")
        time.sleep(0.05)


def _run_scenario(pg: PrivatePostgres, home: Path) -> Outage:
    outage = Outage()
    pg.start()
    with psycopg.connect(pg.url("postgres"), autocommit=True) as admin:
        admin.execute("CREATE DATABASE outage")
    server = Daphne(pg.url("outage"), home)
    server.manage("migrate", "--noinput", "-v0")
    agent = server.manage("create_api_token", "bot", "--group", "agents").split()[-1]
    created = server.manage("create_operator", "olga")
    password = re.search(r"with password: (\S+)", created)
    assert password, created
    operator = server.manage("create_api_token", "olga", "--group", "operators").split()[-1]
    server.start()
    port = server.port
    try:
        session = _sign_in(port, "olga", password.group(1))
        call_id = f"call-{uuid.uuid4().hex[:8]}"
        asked = call(port, "POST", "/api/hitl/requests/", _ask(call_id), token=agent)
        assert asked.status == 201, asked.body
        # Traffic before the outage, so the pool holds connections the outage will break.
        for _ in range(5):
            posted = call(port, "POST", "/api/events/", _event("s-before"), token=agent)
            assert posted.status == 201, posted.body
            outage.acknowledged.extend(posted.body["event_ids"])
        assert call(port, "GET", "/api/hitl/requests/", token=operator).status == 200
        assert call(port, "GET", "/api/hitl/requests/", cookies=session).status == 200

        pg.stop("immediate")
        down_at = time.monotonic()
        decision = {"decision": "APPROVE", "comment": "ok"}
        during = outage.during
        during["events"] = call(port, "POST", "/api/events/", _event("s-during"), token=agent)
        during["decision"] = call(
            port, "POST", f"/api/hitl/requests/{call_id}/decision/", decision, token=operator
        )
        during["session"] = call(port, "GET", "/api/hitl/requests/", cookies=session)
        during["long_poll"] = call(port, "GET", f"/api/hitl/requests/{call_id}/?wait=5", token=agent)
        during["healthz"] = call(port, "GET", "/healthz")
        during["page"] = call(port, "GET", "/hitl/", cookies=session)
        for answer in during.values():
            if answer.status == 201:  # must not happen; but if it did, it must be stored
                outage.acknowledged.extend(answer.body.get("event_ids", []))
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))

        pg.start()  # returns once the server accepts connections
        after = outage.after

        def post_event() -> Answer:
            answer = call(port, "POST", "/api/events/", _event("s-after"), token=agent)
            if answer.status == 201:
                outage.acknowledged.extend(answer.body["event_ids"])
            return answer

        _until(outage, "events", post_event, lambda a: a.status == 201)
        _until(
            outage,
            "decision",
            lambda: call(port, "POST", f"/api/hitl/requests/{call_id}/decision/", decision, token=operator),
            lambda a: a.status == 200,
        )
        _until(outage, "healthz", lambda: call(port, "GET", "/healthz"), lambda a: a.status == 200)
        after["long_poll"] = call(port, "GET", f"/api/hitl/requests/{call_id}/?wait=5", token=agent)
        after["session"] = call(port, "GET", "/api/hitl/requests/", cookies=session)
        # A burst: no request may meet a connection the outage broke.
        burst = [post_event() for _ in range(10)]
        after["burst"] = next((a for a in burst if a.status != 201), burst[-1])
    finally:
        server.stop()
        outage.server_log = server.log_tail()
    with psycopg.connect(pg.url("outage")) as db:
        rows = db.execute("SELECT event_id FROM events_storedevent").fetchall()
    outage.stored = {str(uuid.UUID(str(row[0]))) for row in rows}
    print(outage.timings())  # shown with -s, and with a failure
    return outage


@pytest.fixture(scope="module")
def outage() -> Iterator[Outage]:
    """The outage scenario, run once; what it saw."""
    bindir = _postgres_bin()
    if bindir is None or not (bindir / "initdb").exists():
        if REQUIRE_SERVICES:
            pytest.fail("REQUIRE_SERVICES=1 but PostgreSQL's initdb/pg_ctl are not installed", pytrace=False)
        pytest.skip("PostgreSQL's server binaries (initdb, pg_ctl) are not installed")
    pg = PrivatePostgres(bindir)
    home = Path(tempfile.mkdtemp(prefix="outage-server-"))
    try:
        yield _run_scenario(pg, home)
    finally:
        pg.close()
        shutil.rmtree(home, ignore_errors=True)


def _describe(name: str, answer: Answer) -> str:
    retry_after = answer.headers.get("retry-after")
    return f"{name}: {answer.status} in {answer.seconds:.2f}s, Retry-After {retry_after!r}: {answer.body!r}"


def _assert_store_unavailable(name: str, answer: Answer, outage: Outage) -> None:
    explained = f"{_describe(name, answer)}\n== server log\n{outage.server_log}"
    assert answer.status == 503, explained
    assert answer.headers.get("content-type", "").startswith("application/json"), explained
    assert answer.body["code"] == "store_unavailable" and answer.body["detail"], explained
    assert int(answer.headers["retry-after"]) >= 1, explained
    assert answer.seconds < FAST_503_S, explained


@pytest.mark.postgres
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["events", "decision", "session", "long_poll"])
def test_every_api_answers_503_store_unavailable_quickly_while_the_database_is_down(
    outage: Outage, name: str
) -> None:
    _assert_store_unavailable(name, outage.during[name], outage)


@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_healthz_answers_503_within_2s_while_the_database_is_down(outage: Outage) -> None:
    answer = outage.during["healthz"]
    assert answer.status == 503 and answer.body["database"] == "error", _describe("healthz", answer)
    assert answer.seconds < HEALTHZ_S, _describe("healthz", answer)


@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_a_page_answers_503_not_500_while_the_database_is_down(outage: Outage) -> None:
    answer = outage.during["page"]
    assert answer.status == 503, f"{_describe('page', answer)}\n{outage.server_log}"
    assert answer.headers.get("retry-after"), _describe("page", answer)


@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_service_is_back_within_2s_of_the_database_coming_back(outage: Outage) -> None:
    explained = "\n".join(
        [f"{name}: first success after {outage.recovered_in[name]:.2f}s" for name in outage.recovered_in]
        + [_describe(name, answer) for name, answer in outage.after.items()]
        + ["== server log", outage.server_log]
    )
    assert outage.after["events"].status == 201, explained
    assert outage.after["decision"].status == 200, explained
    assert outage.after["decision"].body["status"] == "approved", explained
    assert outage.after["healthz"].status == 200, explained
    assert outage.after["long_poll"].status == 200, explained
    assert outage.after["session"].status == 200, explained
    assert outage.after["burst"].status == 201, explained
    # Not even a 503 once the database is back: no request meets a connection the outage broke (the
    # pool's, or the one the event store's writer keeps).
    assert not outage.refused_after, explained
    # Each first success came within RECOVERY_S of the database accepting connections (measured from
    # pg_ctl's return, one after the other: the later ones include the earlier ones' time).
    assert outage.recovered_in["events"] < RECOVERY_S, explained
    total = sum(outage.recovered_in.values())
    assert total < RECOVERY_S, explained


@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_no_acknowledged_event_is_lost_across_the_outage(outage: Outage) -> None:
    assert outage.acknowledged, "no event was acknowledged"
    missing = [event_id for event_id in outage.acknowledged if event_id not in outage.stored]
    assert not missing, f"{len(missing)} acknowledged events are not stored: {missing[:5]}"


# The long-poll's path: no database needed (the ASGI app is called in-process).


def _long_poll(path: str) -> tuple[int, dict[str, Any]]:
    from hitl.longpoll import long_poll_app

    async def django_app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the long-poll's own checks should have answered")

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "query_string": b"wait=5",
        "headers": [(b"host", b"localhost"), (b"authorization", b"Bearer ebt_whatever")],
    }
    asyncio.run(long_poll_app(django_app)(scope, receive, send))
    return sent[0]["status"], json.loads(sent[1]["body"])


@pytest.mark.parametrize(
    "call_id", ["a\x00b", "a\ud800b", "\udfff"], ids=["nul", "lone-high-surrogate", "lone-low-surrogate"]
)
def test_a_long_poll_call_id_with_a_nul_or_lone_surrogate_is_400_invalid(call_id: str) -> None:
    status, body = _long_poll(f"/api/hitl/requests/{call_id}/")
    assert status == 400, body
    assert body["code"] == "invalid"
    assert body["errors"][0]["field"] == "call_id"


# The same rules without a database to stop: the errors an outage raises, raised by hand.


def _long_poll_with_token_check_failing(monkeypatch: pytest.MonkeyPatch) -> tuple[int, dict[str, Any]]:
    import hitl.longpoll

    def unreachable(raw_token: str) -> Any:
        raise OperationalError("connection refused")

    monkeypatch.setattr(hitl.longpoll, "authenticate_token", unreachable)
    return _long_poll("/api/hitl/requests/call-1/")


def test_a_long_poll_answers_503_store_unavailable_when_the_database_is_unreachable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    status, body = _long_poll_with_token_check_failing(monkeypatch)
    assert status == 503 and body["code"] == "store_unavailable", body


@pytest.mark.parametrize("error", [OperationalError("refused"), InterfaceError("connection closed")])
def test_the_token_lookup_failing_on_an_unreachable_database_is_503_store_unavailable(
    client: Any, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    import accounts.auth

    def unreachable(*, raw_token: str) -> Any:
        raise error

    monkeypatch.setattr(accounts.auth, "api_token_get_active", unreachable)
    response = client.post(
        "/api/events/", data="{}", content_type="application/json", HTTP_AUTHORIZATION="Bearer ebt_x"
    )
    assert response.status_code == 503, response.content
    assert response.json()["code"] == "store_unavailable" and response.json()["detail"]
    assert response["Retry-After"] == "1"


def test_a_database_error_that_is_not_an_outage_stays_a_bug() -> None:
    from core.errors import api_exception_handler

    assert api_exception_handler(IntegrityError("duplicate key"), {"request": None}) is None
    answer = api_exception_handler(PoolTimeout("couldn't get a connection after 2.00 sec"), {"request": None})
    assert answer is not None and answer.status_code == 503


@pytest.mark.parametrize(
    ("path", "content_type"), [("/api/anything/", "application/json"), ("/hitl/", "text/html; charset=utf-8")]
)
def test_a_view_outside_drf_answers_503_not_500_when_the_database_is_unreachable(
    rf: Any, path: str, content_type: str
) -> None:
    from core.outage import StoreOutageMiddleware

    middleware = StoreOutageMiddleware(lambda request: None)
    response = middleware.process_exception(rf.get(path), OperationalError("connection refused"))
    assert response is not None and response.status_code == 503
    assert response["Content-Type"] == content_type and response["Retry-After"] == "1"
    assert middleware.process_exception(rf.get(path), IntegrityError("duplicate key")) is None
