"""The admin of the audit trail: read-only for everyone, filters and search on indexes, and the chain's
check behind a button."""

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.roles import AUDITORS
from accounts.services import roles_setup
from audit.models import AuditEntry
from events.agent_events import AgentErrorOccurredEvent, AgentSwitchedEvent
from events.base import BaseEvent
from events.db_triggers import install_append_only
from events.event_store import event_store
from events.tool_events import ToolExecutionFailedEvent

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = reverse("admin:audit_auditentry_changelist")
VERIFY = reverse("admin:audit_auditentry_verify")
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def switched(*, session="session-1", correlation=None, actor=None, to_agent="coder") -> BaseEvent:
    event = AgentSwitchedEvent(
        session_id=session,
        correlation_id=correlation,
        from_agent="orchestrator",
        to_agent=to_agent,
        timestamp=T0,
    )
    event.actor = actor
    return event


def failed(*, session="session-1", correlation=None) -> BaseEvent:
    return ToolExecutionFailedEvent(
        session_id=session,
        correlation_id=correlation,
        tool_name="shell",
        call_id="call-1",
        error_message="<b>exit 1</b>",
        timestamp=T0 + timedelta(seconds=1),
    )


def store(*events: BaseEvent) -> list[int]:
    """Write through the store in this thread; its hook appends the critical events to the trail."""
    event_store._write_batch(list(events))
    return list(
        AuditEntry.objects.filter(event_id__in=[e.event_id for e in events]).values_list("id", flat=True)
    )


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def shown(response) -> list[int]:
    assert response.status_code == 200, response.status_code
    return [row.id for row in response.context["cl"].result_list]


def change_url(entry_id: int) -> str:
    return reverse("admin:audit_auditentry_change", args=[entry_id])


def tamper(entry_id: int) -> None:
    """Change an entry's data behind the app's back, with the append-only trigger out of the way."""
    sql = "UPDATE audit_auditentry SET actor = 'mallory' WHERE id = %s"
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("ALTER TABLE audit_auditentry DISABLE TRIGGER USER")
            cursor.execute(sql, [entry_id])
            cursor.execute("ALTER TABLE audit_auditentry ENABLE TRIGGER USER")
        else:
            cursor.execute("DROP TRIGGER audit_auditentry_no_update")
            cursor.execute("DROP TRIGGER audit_auditentry_no_delete")
            cursor.execute(sql, [entry_id])
            with connection.schema_editor() as editor:
                install_append_only(editor, "audit_auditentry")


@pytest.fixture(autouse=True)
def only_seeded_events(fresh_bus):
    """Signing in is audited too: keep it out of the trail, so each list is exactly what a test wrote."""
    fresh_bus.clear()


@pytest.fixture
def root(django_user_model):
    return django_user_model.objects.create_superuser("root", "root@example.com", "pw")


@pytest.fixture
def viewer(django_user_model):
    """Staff who may view the trail, and nothing else (not verify it)."""
    user = django_user_model.objects.create_user("vera", password="pw", is_staff=True)
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="audit", codename="view_auditentry")
    )
    return user


@pytest.fixture
def auditor(django_user_model):
    roles_setup()
    user = django_user_model.objects.create_user("alice", password="pw", is_staff=True)
    user.groups.add(Group.objects.get(name=AUDITORS))
    return user


@pytest.fixture
def stranger(django_user_model):
    return django_user_model.objects.create_user("sam", password="pw", is_staff=True)


def test_changelist_is_newest_first_with_links_and_nothing_to_add(viewer):
    store(switched(correlation="corr-1"), BaseEvent("tick", "metrics"), failed())
    first, second = AuditEntry.objects.order_by("id").values_list("id", flat=True)

    response = client_for(viewer).get(CHANGELIST)

    assert shown(response) == [second, first]  # the tick is not audited
    html = response.content.decode()
    assert "addlink" not in html and "action-checkbox" not in html
    assert reverse("admin:events_storedevent_trace") + "?correlation_id=corr-1" in html
    assert reverse("admin:events_storedevent_timeline") + "?session_id=session-1" in html
    entry = AuditEntry.objects.get(id=first)
    assert f'href="{reverse("admin:events_storedevent_change", args=[entry.position])}"' in html
    assert "Verify the chain" not in html  # vera may not verify


@pytest.mark.parametrize("who", ["root", "viewer"])
def test_nobody_adds_changes_or_deletes_entries(who, request):
    client = client_for(request.getfixturevalue(who))
    (entry_id,) = store(switched())
    before = AuditEntry.objects.values().get(id=entry_id)
    delete_url = reverse("admin:audit_auditentry_delete", args=[entry_id])

    assert client.get(change_url(entry_id)).status_code == 200
    assert client.get(reverse("admin:audit_auditentry_add")).status_code == 403
    assert client.post(reverse("admin:audit_auditentry_add"), {"event_type": "x"}).status_code == 403
    assert client.post(change_url(entry_id), {"actor": "mallory", "_save": "Save"}).status_code == 403
    assert client.get(delete_url).status_code == 403
    assert client.post(delete_url, {"post": "yes"}).status_code == 403
    client.post(CHANGELIST, {"action": "delete_selected", "index": 0, "_selected_action": [entry_id]})

    assert AuditEntry.objects.values().get(id=entry_id) == before


def test_staff_without_the_view_permission_sees_nothing(stranger):
    (entry_id,) = store(switched())
    client = client_for(stranger)

    for url in (CHANGELIST, change_url(entry_id), VERIFY):
        assert client.get(url).status_code == 403, url
    assert client.post(VERIFY).status_code == 403


def test_filters_by_event_type_kind_and_actor(root):
    by_alice, by_bob = store(switched(actor="alice"), switched(actor="bob", to_agent="reviewer"))
    (error,) = store(AgentErrorOccurredEvent(agent_type="coder", error_message="boom", session_id="s"))
    client = client_for(root)

    assert shown(client.get(CHANGELIST, {"event_type": "agent_switched"})) == [by_bob, by_alice]
    assert shown(client.get(CHANGELIST, {"event_type": "agent_error_occurred"})) == [error]
    assert shown(client.get(CHANGELIST, {"event_type": "agent"})) == []  # exact
    assert shown(client.get(CHANGELIST, {"kind": "event"})) == [error, by_bob, by_alice]
    assert shown(client.get(CHANGELIST, {"kind": "checkpoint"})) == []
    assert client.get(CHANGELIST, {"kind": "a\x00b"}).status_code == 400  # never sent to the database
    assert shown(client.get(CHANGELIST, {"id__lte": str(by_bob)})) == [by_bob, by_alice]
    assert shown(client.get(CHANGELIST, {"actor": "alice"})) == [by_alice]
    assert shown(client.get(CHANGELIST, {"actor": "alice", "event_type": "agent_error_occurred"})) == []
    assert client.get(CHANGELIST, {"data__icontains": "boom"}).status_code == 400

    html = client.get(CHANGELIST).content.decode()
    assert "?event_type=hitl_decision_made" in html and "?kind=checkpoint" in html
    assert "?actor=alice" in html and "?actor=bob" in html  # recently seen actors


def test_search_by_session_prefix_correlation_and_event_id(root):
    a, b = switched(session="sess-a", correlation="corr-1"), switched(session="sess-b", correlation="corr-2")
    first, second = store(a, b)
    client = client_for(root)

    assert shown(client.get(CHANGELIST, {"q": "sess-b"})) == [second]
    assert shown(client.get(CHANGELIST, {"q": "corr-1"})) == [first]
    assert shown(client.get(CHANGELIST, {"q": a.event_id})) == [first]
    assert shown(client.get(CHANGELIST, {"q": a.event_id[:8]})) == [first]
    # Issue 14: a session by its beginning (SQLite; anywhere in it on PostgreSQL).
    assert len(shown(client.get(CHANGELIST, {"q": "sess"}))) == 2
    assert shown(client.get(CHANGELIST, {"q": "corr"})) == []  # correlation ids match exactly
    assert shown(client.get(CHANGELIST, {"q": a.event_id[:-2] + "zz"})) == []  # a malformed UUID


def test_change_page_pretty_prints_the_data_escaped(root):
    (entry_id,) = store(failed(correlation="corr-9"))

    response = client_for(root).get(change_url(entry_id))

    html = response.content.decode()
    assert '<pre class="events-json">{\n' in html
    assert "&quot;error_message&quot;: &quot;&lt;b&gt;exit 1&lt;/b&gt;&quot;" in html
    assert "<b>exit 1</b>" not in html
    assert reverse("admin:events_storedevent_trace") + "?correlation_id=corr-9" in html
    assert AuditEntry.objects.get(id=entry_id).hash in html
    assert f'href="{VERIFY}"' in html  # root may verify


def test_verify_runs_only_when_asked_and_shows_the_outcome(auditor):
    store(switched(), failed(), switched(actor="alice"))
    entries = list(AuditEntry.objects.order_by("id").values_list("id", flat=True))
    client = client_for(auditor)

    listed = client.get(CHANGELIST)
    assert f'href="{VERIFY}"' in listed.content.decode()
    page = client.get(VERIFY)
    assert page.status_code == 200 and page.context["result"] is None
    assert "Verify the chain now" in page.content.decode()

    held = client.post(VERIFY)
    assert held.status_code == 200
    assert held.context["result"].ok
    assert "The chain holds." in held.content.decode() and "3 entries checked" in held.content.decode()

    tamper(entries[1])
    broken = client.post(VERIFY)
    html = broken.content.decode()
    assert not broken.context["result"].ok
    assert f'<a href="{change_url(entries[1])}">entry #{entries[1]}</a>' in html
    assert "the entry&#x27;s content does not match its hash" in html


def test_verify_needs_its_permission_and_the_csrf_token(viewer, auditor):
    store(switched())

    assert client_for(viewer).get(VERIFY).status_code == 403
    assert client_for(viewer).post(VERIFY).status_code == 403
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(auditor)
    assert strict.post(VERIFY).status_code == 403


def test_changelist_queries_do_not_grow_and_never_distinct(root):
    client = client_for(root)

    def queries(params=None) -> list[str]:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(CHANGELIST, params or {}).status_code == 200
        sql = [q["sql"] for q in captured]
        assert not [q for q in sql if "DISTINCT" in q.upper()], params
        return sql

    store(*[switched(session=f"s-{n}", actor=f"user-{n}") for n in range(5)])
    few = len(queries())
    store(*[switched(session=f"s-{n}", actor=f"user-{n % 7}") for n in range(45)])
    many = len(queries())
    assert many == few
    for params in (
        {"event_type": "agent_switched"},
        {"kind": "event"},
        {"actor": "user-1"},
        {"q": "s-1"},
    ):
        queries(params)
    counts = [q for q in queries() if "COUNT(" in q.upper()]
    assert counts and all("LIMIT" in q.upper() for q in counts), counts  # never every row
