"""Made-up names cannot grow the statistics without bound: the bus's per-type counts, /api/stats/,
the Prometheus series and the metric counters keep at most EVENT_STATS_MAX_TYPES names, the rest
under "other"."""

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.test import Client

from accounts.services import api_token_issue
from audit.models import MetricCounter
from audit.services import bound_metric_keys, metrics_record_events
from events.base import BaseEvent
from events.event_bus import DEFAULT_MAX_STATS_TYPES, EventBus, event_bus
from events.tool_events import ToolExecutionRequestedEvent
from ops.metrics import bus_families


def test_the_default_cap_and_the_setting():
    assert DEFAULT_MAX_STATS_TYPES == 1000
    assert settings.EVENT_STATS_MAX_TYPES == 1000
    assert event_bus.max_stats_types == settings.EVENT_STATS_MAX_TYPES


def test_two_thousand_made_up_types_keep_the_stats_bounded():
    bus = EventBus()
    for n in range(2000):
        bus.publish_sync(BaseEvent(event_type=f"made.up.type_{n}", event_category="metrics", data={}))
    by_type = bus.get_stats()["events_by_type"]
    assert len(by_type) == 1000
    assert sum(by_type.values()) == 2000
    assert by_type["other"] == 1001
    assert by_type["made.up.type_0"] == 1
    # Types seen before the cap keep counting under their own name.
    bus.publish_sync(BaseEvent(event_type="made.up.type_0", event_category="metrics", data={}))
    assert bus.get_stats()["events_by_type"]["made.up.type_0"] == 2
    bus.reset()


def test_the_types_the_project_defines_always_count_under_their_own_name():
    bus = EventBus(max_stats_types=3)
    for n in range(10):
        bus.publish_sync(BaseEvent(event_type=f"custom_{n}", event_category="metrics", data={}))
    bus.publish_sync(BaseEvent(event_type="agent_switched", data={}))
    by_type = bus.get_stats()["events_by_type"]
    assert by_type == {"custom_0": 1, "custom_1": 1, "other": 8, "agent_switched": 1}
    bus.reset()


def test_the_cap_is_checked():
    with pytest.raises(ValueError, match="max_stats_types"):
        EventBus(max_stats_types=0)


def test_the_prometheus_series_stay_bounded():
    bus = EventBus()
    for n in range(2000):
        bus.publish_sync(BaseEvent(event_type=f"made_up_{n}", event_category="metrics", data={}))
    (family, *_) = [f for f in bus_families(bus.get_stats()) if f.name.endswith("by_type_total")]
    assert [labels for _, labels, _ in family.samples] == [(("event_type", "other"),)]
    bus.reset()


@pytest.mark.django_db(transaction=True)  # the view reads the token on a worker thread
def test_api_stats_stays_bounded(fresh_bus):
    for n in range(2000):
        fresh_bus.publish_sync(BaseEvent(event_type=f"made_up_{n}", event_category="metrics", data={}))
    token = api_token_issue(username="auditor-1", group="auditors").token
    response = Client().get("/api/stats/", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.content
    by_type = response.json()["events_by_type"]
    made_up = {
        name: count for name, count in by_type.items() if name.startswith("made_up_") or name == "other"
    }
    assert len(made_up) == settings.EVENT_STATS_MAX_TYPES  # besides the types the project defines
    assert sum(made_up.values()) == 2000


def _tool_requests(names: list[str]) -> list[BaseEvent]:
    return [
        ToolExecutionRequestedEvent(session_id="s", tool_name=name, call_id=f"c-{n}", arguments={})
        for n, name in enumerate(names)
    ]


@pytest.mark.django_db
def test_the_metric_counters_keep_a_bounded_number_of_tools():
    with transaction.atomic(), connection.cursor() as cursor:
        metrics_record_events(cursor, _tool_requests([f"tool_{n:04}" for n in range(1500)]))
        metrics_record_events(cursor, _tool_requests([f"late_{n}" for n in range(10)] + ["tool_0000"]))
    keys = set(MetricCounter.objects.filter(metric="tool_executions").values_list("key", flat=True))
    assert len(keys) == settings.EVENT_STATS_MAX_TYPES
    assert "other" in keys and "tool_0000" in keys and "late_0" not in keys
    counts = dict(
        MetricCounter.objects.filter(metric="tool_executions", field="requested").values_list("key", "value")
    )
    assert sum(counts.values()) == 1511
    assert counts["tool_0000"] == 2
    assert counts["other"] == 1500 - 999 + 10


@pytest.mark.django_db
def test_below_the_cap_nothing_changes():
    with connection.cursor() as cursor:
        deltas = {
            ("tool_executions", "search", "requested"): 2.0,
            ("agent_processing", "coder", "count"): 1.0,
        }
        assert bound_metric_keys(cursor, deltas, limit=5) == deltas
        assert bound_metric_keys(cursor, deltas, limit=1) == {
            ("tool_executions", "other", "requested"): 2.0,
            ("agent_processing", "other", "count"): 1.0,
        }
