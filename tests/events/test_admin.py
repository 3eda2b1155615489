"""The admin of stored events: read-only for everyone, filters and search on indexes, no count of the
whole table, and the trace and session timeline pages."""

import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from core.admin_kit import CappedPaginator, format_duration
from events import admin as events_admin
from events.admin import StoredEventAdmin
from events.base import BaseEvent
from events.event_store import event_store
from events.models import StoredEvent
from events.traces import build_trace

pytestmark = pytest.mark.django_db  # admin pages in this thread: no commits needed

CHANGELIST = reverse("admin:events_storedevent_changelist")
TIMELINE = reverse("admin:events_storedevent_timeline")
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def event(
    event_type: str = "tick",
    category: str = "metrics",
    *,
    session: str | None = "session-1",
    correlation: str | None = None,
    cause: BaseEvent | None = None,
    source: str = "agent_runtime",
    at: float = 0.0,
    data: dict | None = None,
) -> BaseEvent:
    """An event `at` seconds after T0."""
    return BaseEvent(
        event_type,
        category,
        session_id=session,
        correlation_id=correlation,
        causation_id=cause.event_id if cause is not None else None,
        source=source,
        timestamp=T0 + timedelta(seconds=at),
        data=data or {},
    )


def store(*events: BaseEvent) -> list[int]:
    """Write through the store, positions and all, in this thread."""
    return event_store._write_batch(list(events))


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def shown(response) -> list[int]:
    """The positions of the changelist's rows, in the order shown."""
    assert response.status_code == 200, response.status_code
    return [row.position for row in response.context["cl"].result_list]


def change_url(position: int) -> str:
    return reverse("admin:events_storedevent_change", args=[position])


def trace_url(position: int) -> str:
    return reverse("admin:events_storedevent_event_trace", args=[position])


@pytest.fixture(autouse=True)
def only_seeded_events(fresh_bus):
    """Signing in and creating users publish events too: keep them out of the store, so each list is
    exactly what a test wrote (store() writes without the bus)."""
    fresh_bus.clear()


@pytest.fixture
def root(django_user_model):
    return django_user_model.objects.create_superuser("root", "root@example.com", "pw")


@pytest.fixture
def viewer(django_user_model):
    """Staff with the view permission of stored events, and nothing else."""
    user = django_user_model.objects.create_user("vera", password="pw", is_staff=True)
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="events", codename="view_storedevent")
    )
    return user


@pytest.fixture
def stranger(django_user_model):
    return django_user_model.objects.create_user("sam", password="pw", is_staff=True)


# Changelist


def test_changelist_is_newest_first_with_links_and_no_add_or_actions(viewer):
    first, second, third = store(
        event("agent_switched", "agent", correlation="corr-1"),
        event("tool_execution_requested", "tool", session="session-2"),
        event("tick", session=None),
    )

    response = client_for(viewer).get(CHANGELIST)

    assert shown(response) == [third, second, first]
    html = response.content.decode()
    assert "addlink" not in html and "/add/" not in html
    assert "action-checkbox" not in html and "delete_selected" not in html
    assert f'href="{trace_url(first)}"' in html
    assert f'href="{TIMELINE}?session_id=session-2"' in html
    assert "3 stored events" in html


@pytest.mark.parametrize("who", ["root", "viewer"])
def test_nobody_adds_changes_or_deletes_events(who, request):
    client = client_for(request.getfixturevalue(who))
    (position,) = store(event("tick", data={"n": 1}))
    before = StoredEvent.objects.get(position=position)
    delete_url = reverse("admin:events_storedevent_delete", args=[position])

    assert client.get(change_url(position)).status_code == 200  # may look
    assert client.get(reverse("admin:events_storedevent_add")).status_code == 403
    assert client.post(reverse("admin:events_storedevent_add"), {"event_type": "x"}).status_code == 403
    changed = client.post(change_url(position), {"event_type": "forged", "data": '{"n": 2}', "_save": "Save"})
    assert changed.status_code == 403
    assert client.get(delete_url).status_code == 403
    assert client.post(delete_url, {"post": "yes"}).status_code == 403
    client.post(CHANGELIST, {"action": "delete_selected", "index": 0, "_selected_action": [position]})

    after = StoredEvent.objects.get(position=position)
    assert (after.event_type, after.data, after.timestamp) == (before.event_type, {"n": 1}, before.timestamp)


def test_staff_without_the_view_permission_sees_nothing(stranger):
    (position,) = store(event())
    client = client_for(stranger)

    for url in (
        CHANGELIST,
        change_url(position),
        trace_url(position),
        reverse("admin:events_storedevent_trace") + "?correlation_id=x",
        TIMELINE + "?session_id=session-1",
    ):
        assert client.get(url).status_code == 403, url


def test_anonymous_users_are_sent_to_the_login_page():
    (position,) = store(event())

    for url in (CHANGELIST, trace_url(position), TIMELINE):
        response = Client().get(url)
        assert response.status_code == 302 and "/login/" in response["Location"]


def test_filters_by_category_type_source_and_position(root):
    agent, tool, custom, other_source = store(
        event("agent_switched", "agent"),
        event("tool_execution_requested", "tool"),
        event("my_own_type", "system"),
        event("tool_execution_requested", "tool", source="runner-7"),
    )
    client = client_for(root)

    assert shown(client.get(CHANGELIST, {"event_category": "tool"})) == [other_source, tool]
    assert shown(client.get(CHANGELIST, {"event_category": "agent"})) == [agent]
    assert shown(client.get(CHANGELIST, {"event_category": "hitl"})) == []
    assert shown(client.get(CHANGELIST, {"event_type": "tool_execution_requested"})) == [other_source, tool]
    assert shown(client.get(CHANGELIST, {"event_type": "my_own_type"})) == [custom]  # typed in the box
    assert shown(client.get(CHANGELIST, {"event_type": "my_own"})) == []  # exact, not a substring
    assert shown(client.get(CHANGELIST, {"source": "runner-7"})) == [other_source]
    assert shown(client.get(CHANGELIST, {"source": "runner-7", "event_category": "agent"})) == []
    assert shown(client.get(CHANGELIST, {"position__lte": str(tool)})) == [tool, agent]
    assert len(shown(client.get(CHANGELIST, {"source": ""}))) == 4  # an empty box: no filter

    html = client.get(CHANGELIST, {"event_category": "tool"}).content.decode()
    # Category: the contract's categories; type: the EventType values; source: recently seen values.
    for category in ("agent", "session", "tool", "hitl", "system", "metrics"):
        assert f"?event_category={category}" in html
    assert "?event_category=tool&amp;event_type=hitl_decision_made" in html
    assert "?event_category=tool&amp;source=runner-7" in html
    type_box = html[html.index('data-filter-title="type"') :]
    type_box = type_box[: type_box.index("</details>")]
    assert '<input type="hidden" name="event_category" value="tool">' in type_box


def test_bad_filter_values_and_orderings_do_not_fail(root):
    older, newer = store(event("a_type", "system"), event("b_type", "system"))
    client = client_for(root)

    not_a_number = client.get(CHANGELIST, {"position__lte": "12abc"})
    assert shown(not_a_number) == [newer, older]  # not filtered
    assert "“12abc” is not a whole number." in not_a_number.content.decode()
    # PostgreSQL refuses NUL characters: the URL's one entrance refuses them, never sent.
    for name in ("source", "event_type", "event_category"):
        refused = client.get(CHANGELIST, {name: "a\x00b"})
        assert refused.status_code == 400 and name in refused.content.decode()
    assert shown(client.get(CHANGELIST, {"event_category": "nonsense"})) == []
    assert shown(client.get(CHANGELIST, {"event_type": "x" * 5000})) == []
    # Lookups other than the filters' would scan the whole table: refused, not run.
    for lookup in ("data__icontains", "event_type__contains", "source__iregex", "session_id__startswith"):
        assert client.get(CHANGELIST, {lookup: "x"}).status_code == 400
    # Only the position sorts (both ways); ?o= of another column keeps the newest first.
    assert shown(client.get(CHANGELIST, {"o": "2"})) == [newer, older]  # event_type
    assert shown(client.get(CHANGELIST, {"o": "0"})) == [older, newer]  # position, ascending
    assert shown(client.get(CHANGELIST, {"o": "-0"})) == [newer, older]


def test_search_by_session_prefix_correlation_and_event_id(root):
    a = event(session="sess-a", correlation="corr-x")
    b = event(session="sess-b", correlation="corr-y")
    c = event(session="corr-x", correlation="corr-z")  # a session id equal to another's correlation id
    pa, pb, pc = store(a, b, c)
    client = client_for(root)

    assert shown(client.get(CHANGELIST, {"q": "sess-a"})) == [pa]
    assert shown(client.get(CHANGELIST, {"q": "  corr-y "})) == [pb]
    assert shown(client.get(CHANGELIST, {"q": "corr-x"})) == [pc, pa]
    # Issue 14: a session by its beginning (SQLite; anywhere in it on PostgreSQL), served by its index.
    assert shown(client.get(CHANGELIST, {"q": "sess"})) == [pb, pa]
    # A substring on PostgreSQL (trigram-indexed); on SQLite a prefix only.
    substring = connection.vendor == "postgresql"
    assert shown(client.get(CHANGELIST, {"q": "ess-"})) == ([pb, pa] if substring else [])
    assert shown(client.get(CHANGELIST, {"q": b.event_id})) == [pb]
    assert shown(client.get(CHANGELIST, {"q": b.event_id.upper()})) == [pb]
    assert shown(client.get(CHANGELIST, {"q": b.event_id[:13]})) == [pb]  # a prefix of the UUID
    assert shown(client.get(CHANGELIST, {"q": "sess-a", "event_category": "tool"})) == []

    for malformed in (b.event_id[:-1] + "z", "not-a-uuid", "1234", "{" + "x" * 300, "%", "--------"):
        assert shown(client.get(CHANGELIST, {"q": malformed})) == [], malformed
    # A NUL character (PostgreSQL would refuse it): a 400 naming the parameter, not a 500.
    refused = client.get(CHANGELIST, {"q": "a\x00b"})
    assert refused.status_code == 400
    assert "q: contains a NUL character" in refused.content.decode()


def test_change_page_pretty_prints_the_data_escaped_with_links(root):
    cause = event("tool_execution_requested", "tool", correlation="corr-1", data={"tool_name": "shell"})
    effect = event(
        "tool_execution_failed",
        "tool",
        correlation="corr-1",
        cause=cause,
        data={"error": "<script>alert(1)</script>", "nested": {"ü": [1, 2]}},
    )
    cause_position, position = store(cause, effect)

    response = client_for(root).get(change_url(position))

    assert response.status_code == 200
    html = response.content.decode()
    assert '<pre class="events-json">{\n  &quot;error&quot;: &quot;&lt;script&gt;' in html
    assert "<script>alert(1)</script>" not in html
    assert "&quot;ü&quot;: [\n      1," in html  # indented, non-ASCII kept
    assert f'href="{trace_url(position)}"' in html
    assert f'href="{TIMELINE}?session_id=session-1"' in html
    assert f'href="{change_url(cause_position)}"' in html  # caused by
    assert 'name="_save"' not in html and "<textarea" not in html


# Trace


def test_trace_shows_the_causation_tree_with_durations(viewer):
    root_event = event(
        "agent_processing_started", "agent", correlation="trace-1", data={"agent_type": "coder"}
    )
    asked = event("tool_execution_requested", "tool", correlation="trace-1", cause=root_event, at=1.5)
    failed = event("tool_execution_failed", "tool", correlation="trace-1", cause=asked, at=1.75)
    other = store(event("tick", correlation="trace-2", at=1.8))
    sibling = event("agent_switched", "agent", correlation="trace-1", cause=root_event, at=2.0, session="s-2")
    stray = event("tick", correlation="trace-1", cause=event(), at=2.5)  # its cause is not in the trace
    positions = store(root_event, asked, failed, sibling, stray)
    p_root, p_asked, p_failed, p_sibling, p_stray = positions

    response = client_for(viewer).get(trace_url(p_failed))

    assert response.status_code == 200
    steps = response.context["steps"]
    assert [(s.position, s.depth) for s in steps] == [
        (p_root, 0),
        (p_asked, 1),
        (p_failed, 2),
        (p_sibling, 1),
        (p_stray, 0),
    ]
    assert other[0] not in [s.position for s in steps]
    html = response.content.decode()
    rows = re.findall(r'<tr class="events-step[^"]*" data-position="(\d+)" data-depth="(\d+)">', html)
    assert rows == [(str(s.position), str(s.depth)) for s in steps]
    durations = {s.position: (s.extra["since_parent"], s.extra["since_previous"]) for s in steps}
    assert durations[p_root] == ("", "")
    assert durations[p_asked] == ("+1.500 s", "+1.500 s")
    assert durations[p_failed] == ("+250 ms", "+250 ms")
    assert durations[p_sibling] == ("+2.000 s", "+250 ms")  # since its cause; since the previous event
    assert durations[p_stray] == ("", "+500 ms")
    assert steps[2].extra["focus"] and not steps[0].extra["focus"]
    for position in positions:
        assert f'href="{change_url(position)}"' in html
    assert "5 events with the correlation id <code>trace-1</code>, 2 roots, over +2.500 s" in html
    assert "agent_type=coder" in html

    by_correlation = client_for(viewer).get(
        reverse("admin:events_storedevent_trace"), {"correlation_id": "trace-1"}
    )
    assert [s.position for s in by_correlation.context["steps"]] == [s.position for s in steps]


def test_trace_is_capped_with_a_message(root, monkeypatch):
    monkeypatch.setattr(events_admin, "TRACE_LIMIT", 3)
    first = event(correlation="big")
    positions = store(first, *[event(correlation="big", cause=first, at=n) for n in range(1, 5)])

    response = client_for(root).get(trace_url(positions[0]))

    assert [s.position for s in response.context["steps"]] == positions[:3]
    assert "This trace has more than 3 events: only the first 3 (by position) are shown" in (
        response.content.decode()
    )


def test_trace_of_an_event_without_correlation_and_of_nothing(root):
    lonely = event(correlation=None)
    (position,) = store(lonely)  # straight to the store: the bus would give it a correlation id
    assert StoredEvent.objects.get(position=position).correlation_id is None
    client = client_for(root)

    response = client.get(trace_url(position))
    assert [s.position for s in response.context["steps"]] == [position]
    assert "This event has no correlation id" in response.content.decode()
    assert client.get(reverse("admin:events_storedevent_event_trace", args=["999999"])).status_code == 404
    assert client.get(reverse("admin:events_storedevent_event_trace", args=["abc"])).status_code == 404
    empty = client.get(reverse("admin:events_storedevent_trace"), {"correlation_id": "nobody"})
    assert empty.status_code == 200 and empty.context["steps"] == []
    assert (
        client.get(reverse("admin:events_storedevent_trace"), {"correlation_id": "a\x00"}).status_code == 400
    )


def test_build_trace_survives_cycles_and_deep_chains():
    ids = [str(uuid.uuid4()) for _ in range(3)]
    cycle = [
        {"position": 1, "event_id": ids[0], "causation_id": ids[2], "timestamp": T0},
        {"position": 2, "event_id": ids[1], "causation_id": ids[0], "timestamp": T0},
        {"position": 3, "event_id": ids[2], "causation_id": ids[1], "timestamp": T0},
    ]
    steps = build_trace(cycle)
    assert [(s.position, s.depth, s.cycle) for s in steps] == [(1, 0, True), (2, 1, False), (3, 2, False)]

    chain_ids = [str(uuid.uuid4()) for _ in range(3000)]  # deeper than Python's recursion limit
    chain = [
        {
            "position": n,
            "event_id": chain_ids[n],
            "causation_id": chain_ids[n - 1] if n else None,
            "timestamp": T0 + timedelta(milliseconds=n),
        }
        for n in range(3000)
    ]
    steps = build_trace(chain)
    assert [s.depth for s in steps] == list(range(3000))
    assert steps[-1].since_parent == timedelta(milliseconds=1)


def test_format_duration():
    assert format_duration(timedelta(microseconds=400)) == "+0.4 ms"
    assert format_duration(timedelta(milliseconds=850)) == "+850 ms"
    assert format_duration(timedelta(seconds=1.25)) == "+1.250 s"
    assert format_duration(timedelta(seconds=125)) == "+2 min 5.0 s"
    assert format_duration(timedelta(hours=1, minutes=2)) == "+1 h 02 min"
    assert format_duration(timedelta(days=3, hours=1)) == "+3 d 1 h"
    assert format_duration(timedelta(milliseconds=-3)) == "−3.0 ms"


# Session timeline


def test_session_timeline_is_in_position_order_with_gaps(viewer, monkeypatch):
    monkeypatch.setattr(events_admin, "TIMELINE_PAGE", 2)
    # Timestamps out of position order: the timeline follows positions (commit order).
    first, _, second, third = store(
        event(session="s-9", at=0),
        event(session="elsewhere", at=1),
        event(session="s-9", at=3, correlation="c-1"),
        event(session="s-9", at=2.5),
    )
    client = client_for(viewer)

    page = client.get(TIMELINE, {"session_id": "s-9"})

    assert page.status_code == 200
    assert [e["row"]["position"] for e in page.context["entries"]] == [first, second]
    assert [e["gap"] for e in page.context["entries"]] == ["", "+3.000 s"]
    html = page.content.decode()
    assert re.findall(r'data-position="(\d+)"', html) == [str(first), str(second)]
    assert f'href="{trace_url(second)}"' in html and f'href="{change_url(first)}"' in html
    assert page.context["older_url"] is None
    later = client.get(page.context["newer_url"])
    assert [e["row"]["position"] for e in later.context["entries"]] == [third]
    assert [e["gap"] for e in later.context["entries"]] == ["−500 ms"]  # from the previous page's last
    assert later.context["newer_url"] is None
    earlier = client.get(later.context["older_url"])
    assert [e["row"]["position"] for e in earlier.context["entries"]] == [first, second]

    assert client.get(TIMELINE, {"session_id": "nobody"}).context["entries"] == []
    assert client.get(TIMELINE).status_code == 200  # asks for a session id
    assert client.get(TIMELINE, {"session_id": "s-9", "after": "x", "before": "-1"}).status_code == 200


# Cost at any size


def _changelist_queries(client: Client, params: dict | None = None) -> tuple[int, list[str]]:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(CHANGELIST, params or {})
    assert response.status_code == 200
    return len(queries), [q["sql"] for q in queries]


def test_changelist_queries_do_not_grow_with_rows(root):
    client = client_for(root)
    store(*[event(f"type-{n}", session=f"s-{n}", source=f"src-{n}") for n in range(5)])
    few, _ = _changelist_queries(client)
    store(*[event(f"type-{n}", session=f"s-{n}", source=f"src-{n}") for n in range(45)])
    many, _ = _changelist_queries(client)

    assert many == few
    assert few <= 8


def test_no_distinct_in_any_changelist_query(root):
    client = client_for(root)
    e = event(correlation="c-1")
    store(e, event("agent_switched", "agent", source="x"))
    for params in (
        {},
        {"event_category": "agent"},
        {"event_type": "agent_switched"},
        {"source": "x"},
        {"q": "c-1"},
        {"q": e.event_id[:8]},
        {"position__lte": "1"},
    ):
        _, sql = _changelist_queries(client, params)
        assert not [q for q in sql if "DISTINCT" in q.upper()], params


def test_pages_reach_a_bounded_number_of_rows(root, monkeypatch):
    monkeypatch.setattr(CappedPaginator, "max_rows", 10)
    monkeypatch.setattr(StoredEventAdmin, "list_per_page", 4)
    positions = store(*[event(at=n) for n in range(15)])
    client = client_for(root)

    first = client.get(CHANGELIST)
    assert shown(first) == positions[::-1][:4]
    html = first.content.decode()
    assert "more than 10 stored events" in html and "the pages reach the newest 10" in html
    assert first.context["cl"].paginator.num_pages == 3
    assert shown(client.get(CHANGELIST, {"p": "3"})) == positions[::-1][8:12]
    assert client.get(CHANGELIST, {"p": "4"}).status_code == 302  # beyond the reach: back to page 1
    assert shown(client.get(CHANGELIST, {"position__lte": str(positions[3])})) == positions[3::-1]
    assert "4 stored events" in client.get(CHANGELIST, {"position__lte": str(positions[3])}).content.decode()


@pytest.mark.postgres
def test_unfiltered_changelist_never_counts_the_whole_table_on_postgres(root, monkeypatch):
    client = client_for(root)
    store(*[event(at=n) for n in range(12)])

    _, sql = _changelist_queries(client)
    counts = [q for q in sql if "COUNT(" in q.upper()]
    # A small table is counted exactly, but through a LIMIT: never COUNT(*) of every row.
    assert counts and all("LIMIT" in q.upper() for q in counts), counts

    # A table above the limit takes PostgreSQL's estimate and counts nothing.
    monkeypatch.setattr(CappedPaginator, "max_rows", 5)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE events_storedevent")
    with CaptureQueriesContext(connection) as queries:
        response = client.get(CHANGELIST)
    assert not [q["sql"] for q in queries if "COUNT(" in q["sql"].upper()]
    assert "about 12 stored events" in response.content.decode()
    assert len(shown(response)) == 12
