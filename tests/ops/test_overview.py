"""`/`: the operators' overview (staff only), its JSON, and the indexed reads behind it."""

import uuid
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from events.models import StoredEvent
from hitl.models import ApprovalRequest
from hitl.services import approval_decide, approval_request
from ops.selectors import events_overview, overview

pytestmark = pytest.mark.django_db


def staff_client(*, superuser: bool = True) -> Client:
    User = get_user_model()
    if superuser:
        user = User.objects.create_superuser("boss", password="x" * 12)
    else:
        user = User.objects.create_user("clerk", password="x" * 12, is_staff=False)
    client = Client()
    client.force_login(user)
    return client


def ask(call_id: str, timeout_s: float = 3600) -> None:
    approval_request(
        call_id=call_id, session_id="s1", tool_name="write_file", arguments={"p": 1}, timeout_s=timeout_s
    )


def store_event(position: int, *, age: timedelta) -> None:
    now = timezone.now()
    StoredEvent.objects.create(
        position=position,
        event_id=uuid.uuid4(),
        event_type="message_added",
        event_category="session",
        timestamp=now - age,
        data={},
        source="test",
        version="1.0",
        stored_at=now,
    )


def test_overview_anonymous_is_sent_to_sign_in_and_back():
    response = Client().get("/")
    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/"


def test_overview_non_staff_gets_the_403_page():
    client = staff_client(superuser=False)
    response = client.get("/")
    assert response.status_code == 403
    assert b"The overview needs the staff role" in response.content
    assert client.get("/overview.json").status_code == 403


def test_overview_shows_pending_expiring_decided_and_links():
    ask("c1", timeout_s=60)  # expires within 5 minutes
    ask("c2")
    ask("c3")
    boss = Client()
    boss.force_login(get_user_model().objects.create_superuser("boss", password="x" * 12))
    approval_decide(
        call_id="c3", user=get_user_model().objects.get(username="boss"), decision="APPROVE", channel="page"
    )
    response = boss.get("/")
    assert response.status_code == 200
    html = response.content.decode()
    assert '<p class="value" data-testid="pending">2</p>' in html
    assert 'data-testid="expiring">1</p>' in html
    assert '<p class="value" data-testid="decided">1</p>' in html
    assert "<li>page: 1</li>" in html
    for href in ["/hitl/", "/events/live/", "/hitl/notifications/", "/admin/", "/api/docs/", "/metrics"]:
        assert f'href="{href}"' in html
    assert 'href="/admin/hitl/approvalrequest/"' in html


def test_overview_json_is_the_figures():
    ask("c1")
    data = staff_client().get("/overview.json").json()
    assert data["approvals"] == {
        "pending": 1,
        "expiring_soon": 0,
        "decided_today": 0,
        "decided_by_channel": {},
    }
    assert data["events"]["last_hour"] >= 1  # the stored tool_approval_required event
    assert set(data["audit"]) == {"entries", "head_entry", "signed", "signed_at"}


def test_overview_events_last_hour_from_positions():
    store_event(1, age=timedelta(hours=3))
    store_event(2, age=timedelta(minutes=50))
    store_event(3, age=timedelta(minutes=1))
    assert events_overview(now=timezone.now()) == {"last_hour": 2, "latest_position": 3}


def test_overview_events_never_counts_the_table():
    store_event(1, age=timedelta(minutes=1))
    with CaptureQueriesContext(connection) as queries:
        overview()
    event_queries = [q["sql"] for q in queries if "events_storedevent" in q["sql"]]
    assert event_queries and not any("COUNT(" in sql.upper() for sql in event_queries)


def test_overview_empty_store():
    assert events_overview(now=timezone.now()) == {"last_hour": 0, "latest_position": None}
    assert ApprovalRequest.objects.count() == 0
