"""The live feed page (/events/live/): who may see it, the filter form, the newest events server-rendered
with links into the admin's trace, and where its socket starts so nothing is lost at the hand-over."""

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import Group, Permission
from django.contrib.staticfiles import finders
from django.test import Client
from django.urls import reverse

from accounts.roles import AUDITORS, OPERATORS
from accounts.services import roles_setup
from events import views
from events.base import BaseEvent
from events.event_store import event_store
from tests.hitl.test_page import dom, json_config

pytestmark = pytest.mark.django_db  # admin pages in this thread: no commits needed

PAGE = "/events/live/"
T0 = datetime(2026, 3, 1, 12, 0, 0, 250_000, tzinfo=UTC)


def event(
    event_type="tool_execution_requested",
    category="tool",
    *,
    session="s1",
    correlation=None,
    at=0.0,
    data=None,
):
    return BaseEvent(
        event_type,
        category,
        session_id=session,
        correlation_id=correlation,
        source="agent_runtime",
        timestamp=T0 + timedelta(seconds=at),
        data=data if data is not None else {"tool_name": "search"},
    )


def store(*events: BaseEvent) -> list[int]:
    """Write through the store, positions and all, in this thread."""
    return event_store._write_batch(list(events))


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture(autouse=True)
def only_seeded_events(fresh_bus):
    """Signing in publishes events too: keep them out of the store (store() writes without the bus)."""
    fresh_bus.clear()


def member(django_user_model, username: str, group: str):
    roles_setup()
    user = django_user_model.objects.create_user(username, password="pw", is_staff=True)
    user.groups.add(Group.objects.get(name=group))
    return user


@pytest.fixture
def auditor(django_user_model):
    return member(django_user_model, "audrey", AUDITORS)


@pytest.fixture
def operator(django_user_model):
    return member(django_user_model, "olga", OPERATORS)


def positions(page) -> list[int]:
    return [int(row.attrs["data-position"]) for row in page.find_all("feed-event")]


def test_anonymous_users_are_sent_to_the_login_page():
    response = Client().get(PAGE)
    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/events/live/"


def test_signed_in_without_the_view_permission_is_forbidden(django_user_model):
    user = django_user_model.objects.create_user("sam", password="pw", is_staff=True)
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="hitl", codename="view_approvalrequest")
    )
    response = client_for(user).get(PAGE)
    assert response.status_code == 403
    assert "needs the auditor or operator role" in dom(response).text


def test_auditors_and_operators_see_the_newest_events_first_with_trace_links(auditor, operator):
    first, second, third = store(
        event(at=0, data={"tool_name": "search", "query": "x" * 400}),
        event("session_created", "session", session=None, at=1),
        event("agent_switched", "agent", session="s2", at=2, data={"to_agent": "coder"}),
    )
    for user in (auditor, operator):
        response = client_for(user).get(PAGE)
        assert response.status_code == 200
        page = dom(response)
        assert positions(page) == [third, second, first]
        assert page.find("feed").tag == "ol"
        assert page.find("live-status").text == "reconnecting"

    newest, no_session, oldest = page.find_all("feed-event")
    assert newest.find("trace-link").attrs["href"] == reverse(
        "admin:events_storedevent_event_trace", args=[third]
    )
    assert newest.find(data_field="event_type").text == "agent_switched"
    assert newest.find(data_field="event_category").text == "agent"
    assert newest.find(data_field="source").text == "agent_runtime"
    assert newest.find(data_field="clock").text == "12:00:02.250 UTC"
    assert newest.find(data_field="preview").text == '{"to_agent": "coder"}'
    session = newest.find(data_field="session")
    assert session.text == "s2"
    assert session.attrs["href"] == reverse("admin:events_storedevent_timeline") + "?session_id=s2"
    assert "hidden" in no_session.find(data_field="session").attrs
    assert "hidden" not in no_session.find(data_field="no-session").attrs
    preview = oldest.find(data_field="preview").text
    assert len(preview) == views.PREVIEW_CHARS and preview.endswith("…")

    # The socket starts where the page was rendered: nothing missed, nothing twice.
    config = json_config(response, "feed-config")
    assert config["ws_path"] == "/ws/events/"
    assert config["after"] == third
    assert config["filters"] == {}
    assert config["connect"] is True
    head, tail = config["links"]["trace_head"], config["links"]["trace_tail"]
    assert f"{head}{third}{tail}" == reverse("admin:events_storedevent_event_trace", args=[third])


def test_filters_narrow_the_rows_and_the_form_keeps_their_values(auditor):
    s1_tool, _other_session, s1_agent, _later_type = store(
        event(session="s1", at=0, correlation="c-1"),
        event(session="s2", at=1, correlation="c-1"),
        event("agent_switched", "agent", session="s1", at=2, correlation="c-1"),
        event("agent_switched", "agent", session="s1", at=3, correlation="c-2"),
    )
    query = {"session_id": "s1", "correlation_id": "c-1", "event_category": "", "event_type": ""}
    response = client_for(auditor).get(PAGE, query)
    page = dom(response)
    assert positions(page) == [s1_agent, s1_tool]
    form = page.find("feed-filters")
    assert form.attrs["method"] == "get"
    inputs = {e.attrs["name"]: e for e in form.iter() if e.tag in ("input", "select")}
    assert set(inputs) == {"session_id", "correlation_id", "event_type", "event_category", "after"}
    assert inputs["session_id"].attrs["value"] == "s1"
    assert inputs["correlation_id"].attrs["value"] == "c-1"
    labels = {e.attrs.get("for") for e in form.iter() if e.tag == "label"}
    assert {f"id_{name}" for name in inputs} <= labels
    config = json_config(response, "feed-config")
    assert config["filters"] == {"session_id": "s1", "correlation_id": "c-1"}

    by_category = dom(
        client_for(auditor).get(PAGE, {"event_category": "agent", "event_type": "agent_switched"})
    )
    form = by_category.find("feed-filters")
    selected = [e for e in form.iter() if e.tag == "option" and "selected" in e.attrs]
    assert [option.attrs["value"] for option in selected] == ["agent"]
    assert positions(by_category) == [_later_type, s1_agent]


def test_with_after_the_socket_replays_from_there(auditor):
    store(event(at=0), event(at=1), event(at=2))
    response = client_for(auditor).get(PAGE, {"after": "1", "session_id": "s1"})
    page = dom(response)
    assert positions(page) == []  # the socket sends them, in order, then live ones
    inputs = {e.attrs["name"]: e for e in page.find("feed-filters").iter() if e.tag == "input"}
    assert inputs["after"].attrs["value"] == "1"
    config = json_config(response, "feed-config")
    assert (config["after"], config["filters"], config["connect"]) == (1, {"session_id": "s1"}, True)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"after": "-1"}, "after"),
        ({"after": "soon"}, "after"),
        ({"event_category": "bogus"}, "event_category"),
        ({"session_id": "x" * 300}, "session_id"),
    ],
)
def test_invalid_filters_are_shown_and_the_feed_does_not_start(auditor, query, field):
    store(event())
    response = client_for(auditor).get(PAGE, query)
    assert response.status_code == 200
    page = dom(response)
    assert positions(page) == []
    assert page.find_all(id=f"id_{field}_error"), page.find("feed-filters").text
    assert json_config(response, "feed-config")["connect"] is False


def test_a_nul_in_a_filter_is_refused_before_the_page(auditor):
    response = client_for(auditor).get(PAGE, {"session_id": "a\x00b"})
    assert response.status_code == 400
    assert "session_id: contains a NUL character" in response.content.decode()


def test_an_empty_store_starts_at_zero_and_says_so(auditor):
    response = client_for(auditor).get(PAGE)
    page = dom(response)
    assert positions(page) == []
    assert "hidden" not in page.find("feed-empty").attrs
    assert json_config(response, "feed-config")["after"] == 0


def test_the_page_is_capped_and_escapes_event_data(auditor):
    store(event(data={"html": "<img src=x onerror=alert(1)>"}), event("<b>bold</b>", "tool", at=1))
    response = client_for(auditor).get(PAGE)
    body = response.content.decode()
    assert "<img src=x" not in body and "<b>bold</b>" not in body
    assert json_config(response, "feed-config")["max_rows"] == views.MAX_ROWS == 500


def test_the_feed_shows_at_most_the_initial_rows(auditor, monkeypatch):
    monkeypatch.setattr(views, "INITIAL_ROWS", 3)
    stored = store(*(event(at=i) for i in range(5)))
    page = dom(client_for(auditor).get(PAGE))
    assert positions(page) == stored[::-1][:3]


def test_the_page_loads_its_static_files(auditor):
    page = dom(client_for(auditor).get(PAGE))
    assets = [e.attrs["src"] for e in page.iter() if e.tag == "script" and "src" in e.attrs]
    assets += [e.attrs["href"] for e in page.iter() if e.tag == "link" and e.attrs.get("rel") == "stylesheet"]
    assert {"/static/events/feed.js", "/static/events/live-socket.js", "/static/events/feed.css"} <= set(
        assets
    )
    for url in assets:
        assert finders.find(url.removeprefix("/static/")), url
