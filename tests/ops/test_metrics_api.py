"""GET /api/metrics/, /api/stats/ and /metrics (Prometheus text): content, access and request latencies."""

import re

import pytest
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.db import connection
from django.db.models import Max
from django.test import AsyncClient, Client
from django.test.utils import CaptureQueriesContext

from accounts.services import api_token_issue
from audit.subscribers import metrics_collector
from events.agent_events import AgentProcessingCompletedEvent, AgentSwitchedEvent
from events.base import BaseEvent
from events.event_bus import event_bus
from events.event_store import event_store
from events.live import live_feed
from events.models import StoredEvent
from events.session_events import SessionCreatedEvent
from events.tool_events import ToolExecutionCompletedEvent, ToolExecutionRequestedEvent
from hitl.services import approval_decide, approval_request
from ops.metrics import (
    CONTENT_TYPE,
    Family,
    LatencyHistograms,
    RequestLatencyMiddleware,
    database_figures,
    render,
    request_latencies,
)

JSON_ROUTES = ("/api/metrics/", "/api/stats/")
BUS_KEYS = {
    "total_published",
    "total_dropped",
    "dropped_by_middleware",
    "dropped_queue_full",
    "lost_on_stopped_loop",
    "middleware_errors",
    "successful_handlers",
    "failed_handlers",
    "timed_out_handlers",
    "events_by_type",
    "queue_depth",
    "queue_max_size",
    "overflow_policy",
    "pending",
    "subscriptions",
    "middleware",
}
STORE_KEYS = {"stored", "duplicates", "rejected", "batches", "write_failures", "buffered", "last_batch_ms"}


# A small parser of the Prometheus text format, strict enough to catch what a scraper would refuse.

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{(.*)\}})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    position = 0
    while position < len(text):
        match = _LABEL.match(text, position)
        assert match, f"bad labels at {text[position:]!r}"
        name, raw, _ = match.groups()
        assert name not in labels, f"label {name} repeated"
        labels[name] = re.sub(r"\\[\\\"n]", lambda m: _UNESCAPE[m.group(0)], raw)
        position = match.end()
    return labels


def parse_prometheus(text: str) -> dict[str, dict]:
    """{family: {"type", "help", "samples": [(name, labels, value)]}}, asserting the format's rules."""
    assert text.endswith("\n"), "the exposition ends with a newline"
    families: dict[str, dict] = {}
    current: str | None = None
    for line in text.splitlines():
        assert line, "no blank lines"
        if line.startswith("# HELP "):
            name, _, help_text = line[len("# HELP ") :].partition(" ")
            assert name not in families, f"family {name} declared twice"
            families[name] = {"help": help_text, "type": None, "samples": []}
            current = name
            continue
        if line.startswith("# TYPE "):
            name, _, kind = line[len("# TYPE ") :].partition(" ")
            assert name == current and families[name]["type"] is None, f"TYPE of {name} out of place"
            assert kind in {"counter", "gauge", "histogram", "summary", "untyped"}
            families[name]["type"] = kind
            continue
        assert not line.startswith("#"), line
        match = _SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name, labels, value = match.groups()
        assert current is not None and families[current]["type"] is not None
        suffixes = ("_bucket", "_sum", "_count") if families[current]["type"] == "histogram" else ("",)
        assert name in {current + suffix for suffix in suffixes}, f"{name} outside its family {current}"
        number = float(value)  # accepts +Inf, -Inf, NaN as the format spells them
        families[current]["samples"].append((name, parse_labels(labels or ""), number))
    return families


def sample(families: dict, name: str, **labels: str) -> float:
    """The value of the one sample with this name and exactly these labels."""
    found = [
        value
        for family in families.values()
        for sample_name, sample_labels, value in family["samples"]
        if sample_name == name and sample_labels == labels
    ]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
    return found[0]


# Fixtures and helpers


@pytest.fixture
def tokens():
    """A raw token for a user of each role and for one with none."""
    return {
        role: api_token_issue(username=f"metrics-{role}", group=group).token
        for role, group in (
            ("auditor", "auditors"),
            ("operator", "operators"),
            ("agent", "agents"),
            ("nobody", None),
        )
    }


@pytest.fixture
def private_metrics(settings):
    settings.METRICS_PUBLIC = False


@pytest.fixture(autouse=True)
def fresh_latencies():
    request_latencies.reset()
    yield
    request_latencies.reset()


def operator_user():
    return api_token_issue(username="metrics-deciding-operator", group="operators").user


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def publish(*events: BaseEvent) -> None:
    for event in events:
        event_bus.publish_sync(event)
    assert event_bus.drain_sync(timeout=10)
    assert event_store.flush_sync(timeout=10)


def a_session() -> list[BaseEvent]:
    s = "metrics-session"
    return [
        SessionCreatedEvent(session_id=s),
        AgentSwitchedEvent(session_id=s, from_agent="orchestrator", to_agent="coder", confidence="high"),
        ToolExecutionRequestedEvent(session_id=s, tool_name="write_file", arguments={"p": 1}, call_id="m1"),
        ToolExecutionCompletedEvent(session_id=s, tool_name="write_file", call_id="m1"),
        AgentProcessingCompletedEvent(session_id=s, agent_type="coder", duration_ms=1500, success=True),
        AgentSwitchedEvent(session_id=s, from_agent="coder", to_agent="orchestrator", confidence="low"),
        BaseEvent("custom_thing", "system", session_id=s),
    ]


# /api/metrics/ and /api/stats/


@pytest.mark.django_db(transaction=True)
def test_metrics_have_the_design_documents_structure(tokens):
    publish(*a_session())
    approval_request(call_id="metrics-1", session_id="s", tool_name="write_file", arguments={})
    approval_decide(call_id="metrics-1", user=operator_user(), decision="REJECT")
    assert event_bus.drain_sync(timeout=10) and event_store.flush_sync(timeout=10)
    response = Client().get("/api/metrics/", headers=bearer(tokens["auditor"]))
    assert response.status_code == 200
    assert response.json() == {
        "agent_switches": {"orchestrator_to_coder": 1, "coder_to_orchestrator": 1},
        "agent_processing": {
            "coder": {"count": 1, "total_duration_ms": 1500, "success_count": 1, "failure_count": 0}
        },
        "tool_executions": {"write_file": {"requested": 1, "completed": 1, "failed": 0}},
        "hitl_decisions": {"write_file": {"APPROVE": 0, "EDIT": 0, "REJECT": 1}},
    }
    assert response.json() == metrics_collector.get_metrics()


@pytest.mark.django_db(transaction=True)
def test_stats_give_the_bus_statistics_with_the_store_and_pending_approvals(tokens):
    publish(*a_session())
    approval_request(call_id="stats-1", session_id="s", tool_name="write_file", arguments={})
    approval_request(call_id="stats-2", session_id="s", tool_name="write_file", arguments={})
    approval_decide(call_id="stats-2", user=operator_user(), decision="REJECT")
    assert event_bus.drain_sync(timeout=10) and event_store.flush_sync(timeout=10)

    response = Client().get("/api/stats/", headers=bearer(tokens["operator"]))
    assert response.status_code == 200
    body = response.json()
    # With Redis, the distributed bus adds its relay's figures.
    assert set(body) - {"distributed"} == BUS_KEYS | {"store", "live", "pending_approvals"}
    assert set(body["live"]) == {"connections", "position", "dispatched", "overflows"}
    assert ("distributed" in body) == bool(settings.REDIS_URL)
    assert set(body["store"]) == STORE_KEYS
    published = body["total_published"]
    assert published >= len(a_session()) + 3  # the session, two approval requests, a decision
    assert body["events_by_type"]["agent_switched"] == 2
    assert body["events_by_type"]["custom_thing"] == 1
    assert body["failed_handlers"] == 0 and body["successful_handlers"] >= published
    assert body["queue_depth"] == 0 and body["pending"] == 0
    assert body["store"]["stored"] == StoredEvent.objects.count()
    assert body["store"]["buffered"] == 0
    assert body["pending_approvals"] == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", JSON_ROUTES)
async def test_anonymous_users_get_401(path):
    response = await AsyncClient().get(path)
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", JSON_ROUTES)
@pytest.mark.parametrize(
    ("role", "status"), [("auditor", 200), ("operator", 200), ("agent", 403), ("nobody", 403)]
)
def test_auditors_and_operators_read_agents_do_not(tokens, path, role, status):
    response = Client().get(path, headers=bearer(tokens[role]))
    assert response.status_code == status, response.content
    if status == 403:
        assert response.json()["code"] == "permission_denied"


@pytest.mark.django_db(transaction=True)
def test_a_bad_token_gets_401_even_on_public_metrics():
    response = Client().get("/metrics", headers=bearer("ebt_not-a-token"))
    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid or revoked token.", "code": "invalid_token"}


# /metrics


@pytest.mark.django_db(transaction=True)
def test_prometheus_text_carries_bus_store_approvals_and_latencies():
    publish(*a_session())
    for call_id in ("prom-1", "prom-2", "prom-3"):
        approval_request(call_id=call_id, session_id="s", tool_name="write_file", arguments={})
    approval_decide(call_id="prom-3", user=operator_user(), decision="APPROVE")
    assert event_bus.drain_sync(timeout=10) and event_store.flush_sync(timeout=10)
    stats = event_bus.get_stats()
    store = event_store.get_stats()

    response = Client().get("/metrics", headers={"Accept": "text/plain"})  # a scraper's Accept: not a 406
    assert response.status_code == 200
    assert response["Content-Type"] == CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
    families = parse_prometheus(response.content.decode())

    assert families["eventbus_bus_events_published_total"]["type"] == "counter"
    assert sample(families, "eventbus_bus_events_published_total") == stats.total_published
    assert sample(families, "eventbus_bus_events_published_by_type_total", event_type="agent_switched") == 2
    # A type the project does not define does not get a series of its own.
    assert sample(families, "eventbus_bus_events_published_by_type_total", event_type="other") == 1
    for outcome, key in (
        ("success", "successful_handlers"),
        ("failure", "failed_handlers"),
        ("timeout", "timed_out_handlers"),
    ):
        assert sample(families, "eventbus_bus_handler_calls_total", outcome=outcome) == stats[key]
    assert sample(families, "eventbus_bus_events_dropped_total", reason="queue_full") == 0
    assert families["eventbus_bus_queue_depth"]["type"] == "gauge"
    assert sample(families, "eventbus_bus_queue_depth") == 0
    assert sample(families, "eventbus_bus_pending") == 0
    assert sample(families, "eventbus_store_events_written_total") == store["stored"] > 0
    last = StoredEvent.objects.aggregate(last=Max("position"))["last"]
    assert sample(families, "eventbus_events_stored") == last == StoredEvent.objects.count()
    approvals = {lab["status"]: v for _, lab, v in families["eventbus_approval_requests"]["samples"]}
    assert approvals == {
        "pending": 2,
        "approved": 1,
        "edited": 0,
        "rejected": 0,
        "expired": 0,
        "cancelled": 0,
    }
    assert families["eventbus_http_request_duration_seconds"]["type"] == "histogram"
    assert families["eventbus_live_connections"]["type"] == "gauge"
    assert sample(families, "eventbus_live_queue_overflows_total") == live_feed.overflows
    # The relay's figures exist exactly when the bus is distributed (REDIS_URL).
    assert ("eventbus_redis_connected" in families) == bool(settings.REDIS_URL)
    if settings.REDIS_URL:
        assert sample(families, "eventbus_redis_events_total", direction="sent") >= 0


def histogram(families: dict, **labels: str) -> tuple[list[tuple[str, float]], float, float]:
    samples = families["eventbus_http_request_duration_seconds"]["samples"]
    buckets = [
        (lab["le"], v)
        for n, lab, v in samples
        if n.endswith("_bucket") and {k: x for k, x in lab.items() if k != "le"} == labels
    ]
    return (
        buckets,
        sample(families, "eventbus_http_request_duration_seconds_sum", **labels),
        sample(families, "eventbus_http_request_duration_seconds_count", **labels),
    )


@pytest.mark.django_db(transaction=True)
def test_the_latency_histogram_counts_each_request_by_url_name(tokens):
    client = Client()
    assert client.get("/api/stats/", headers=bearer(tokens["auditor"])).status_code == 200
    assert client.get("/api/stats/", headers=bearer(tokens["agent"])).status_code == 403
    assert client.get("/no/such/page/12345").status_code == 404
    families = parse_prometheus(client.get("/metrics").content.decode())

    buckets, total_seconds, count = histogram(families, view="stats", method="GET", status="2xx")
    assert count == 1 and total_seconds > 0
    assert [le for le, _ in buckets][-1] == "+Inf" and buckets[-1][1] == count
    values = [v for _, v in buckets]
    assert values == sorted(values)  # cumulative
    assert histogram(families, view="stats", method="GET", status="4xx")[2] == 1
    # A path no pattern matches is counted under one label, never under its raw path.
    assert histogram(families, view="unmatched", method="GET", status="4xx")[2] == 1
    assert "/no/such/page/12345" not in client.get("/metrics").content.decode()
    # A scrape is counted once its response is ready: the third one shows the two before it.
    third = parse_prometheus(client.get("/metrics").content.decode())
    assert histogram(third, view="prometheus-metrics", method="GET", status="2xx")[2] == 2


@pytest.mark.django_db(transaction=True)
async def test_the_latency_middleware_records_async_requests():
    client = AsyncClient()
    assert (await client.get("/healthz")).status_code == 200
    await client.generic("BREW", "/healthz")
    families = parse_prometheus((await client.get("/metrics")).content.decode())
    assert histogram(families, view="healthz", method="GET", status="2xx")[2] == 1
    assert histogram(families, view="healthz", method="other", status="4xx")[2] == 1  # 405, bounded label


def test_the_latency_middleware_adds_no_thread_hop_under_asgi():
    # Django wraps a middleware that cannot run async in sync_to_async; ours must be called as it is,
    # with the rest of the chain async below it.
    layer = getattr(ASGIHandler(), "_middleware_chain")  # noqa: B009 - private, untyped in the stubs
    found = []
    while layer is not None:
        target = getattr(layer, "__wrapped__", layer)
        if isinstance(target, RequestLatencyMiddleware):
            found.append(target)
        layer = getattr(target, "get_response", None)
    assert len(found) == 1 and found[0].is_async


@pytest.mark.django_db
def test_the_database_figures_are_two_cheap_queries():
    with CaptureQueriesContext(connection) as queries:
        database_figures()
    assert len(queries) == 2
    events_query, approvals_query = (q["sql"].upper() for q in queries)
    assert "MAX(" in events_query and "COUNT" not in events_query
    assert "GROUP BY" in approvals_query


def test_histogram_buckets_are_cumulative_and_their_bounds_inclusive():
    histograms = LatencyHistograms(buckets=(0.1, 1.0))
    for seconds in (0.1, 0.5, 3.0):
        histograms.observe("a-view", "GET", "2xx", seconds)
    families = parse_prometheus(render([histograms.family()]))
    labels = {"view": "a-view", "method": "GET", "status": "2xx"}
    name = "eventbus_http_request_duration_seconds"
    assert [sample(families, f"{name}_bucket", **labels, le=le) for le in ("0.1", "1.0", "+Inf")] == [1, 2, 3]
    assert sample(families, f"{name}_count", **labels) == 3
    assert sample(families, f"{name}_sum", **labels) == pytest.approx(3.6)


def test_label_values_are_escaped():
    family = Family("eventbus_test", "gauge", "A help line with a \\ backslash\nand a newline.")
    family.add(1.5, view='a "quoted"\\ \nname')
    families = parse_prometheus(render([family]))
    assert families["eventbus_test"]["help"] == "A help line with a \\\\ backslash\\nand a newline."
    assert families["eventbus_test"]["samples"] == [("eventbus_test", {"view": 'a "quoted"\\ \nname'}, 1.5)]


# Access to /metrics


@pytest.mark.django_db(transaction=True)
def test_metrics_are_public_by_default():
    assert Client().get("/metrics").status_code == 200


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("role", "status"),
    [(None, 401), ("agent", 403), ("nobody", 403), ("auditor", 200), ("operator", 200)],
)
def test_metrics_public_false_limits_them_to_operators_and_auditors(private_metrics, tokens, role, status):
    headers = bearer(tokens[role]) if role else {}
    response = Client().get("/metrics", headers=headers)
    assert response.status_code == status
    if status == 200:
        assert response["Content-Type"] == CONTENT_TYPE
        assert "eventbus_bus_events_published_total" in parse_prometheus(response.content.decode())
    else:
        assert response["Content-Type"] == "application/json"
        assert response.json()["code"] == ("not_authenticated" if role is None else "permission_denied")
