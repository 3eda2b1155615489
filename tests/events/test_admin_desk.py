"""Issue 14, the stored events' admin for auditors: a date range (`since`/`until`, as the API), an
export of the list's rows in the API's formats, and a changelist whose queries do not grow
with its rows."""

import csv
import io
import json
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.roles import AUDITORS
from accounts.services import roles_setup
from events.selectors import CONTRACT_FIELDS

from . import test_admin as base
from .test_admin import CHANGELIST, T0, client_for, event, shown, store

pytestmark = pytest.mark.django_db(transaction=True)

EXPORT = reverse("admin:audit_auditentry_export")
root, viewer, only_seeded_events = base.root, base.viewer, base.only_seeded_events


@pytest.fixture
def auditor(django_user_model):
    roles_setup()
    user = django_user_model.objects.create_user("alice", password="pw", is_staff=True)
    user.groups.add(Group.objects.get(name=AUDITORS))
    return user


def body_of(response) -> str:
    """A streamed export's text (the view streams from an async iterator, as under Daphne)."""
    assert response.status_code == 200, response.status_code

    async def read() -> bytes:
        return b"".join([chunk async for chunk in response.streaming_content])

    return async_to_sync(read)().decode()


def test_events_date_range_filter_reads_since_and_until_as_the_api(root):
    early, middle, late = store(event(at=0), event(at=3600), event(at=7200))
    client = client_for(root)
    at = lambda seconds: (T0 + timedelta(seconds=seconds)).isoformat()  # noqa: E731

    assert shown(client.get(CHANGELIST, {"since": at(3600)})) == [late, middle]  # inclusive
    assert shown(client.get(CHANGELIST, {"until": at(3600)})) == [early]  # exclusive
    assert shown(client.get(CHANGELIST, {"since": at(1), "until": at(7200)})) == [middle]
    html = client.get(CHANGELIST, {"since": at(3600)}).content.decode()
    assert 'type="datetime-local"' in html and 'name="since"' in html and 'name="until"' in html
    bad = client.get(CHANGELIST, {"since": "soon"})
    assert shown(bad) == [late, middle, early] and "is not a date and time" in bad.content.decode()


def test_events_export_streams_the_lists_rows_as_the_contracts_events_in_every_api_format(auditor):
    by_alice = event("agent_switched", "agent", at=10)
    by_alice.actor = "alice"
    store(event("tick", at=0), by_alice, event("agent_switched", "agent", at=20))
    client = client_for(auditor)
    params = {"scope": "events", "event_category": "agent", "since": (T0 + timedelta(seconds=5)).isoformat()}
    # The list shows the export links with its filters.
    html = client.get(CHANGELIST, {"event_category": "agent"}).content.decode()
    assert 'data-testid="export-csv"' in html and "event_category=agent" in html

    ndjson = [
        json.loads(line) for line in body_of(client.get(EXPORT, {**params, "format": "ndjson"})).splitlines()
    ]
    assert [row["event_id"] for row in ndjson] == [by_alice.event_id, ndjson[1]["event_id"]]
    # Exactly the contract's event with its position (who acted is in the audit trail's export).
    assert list(ndjson[0]) == [*CONTRACT_FIELDS]
    assert all(row["event_category"] == "agent" for row in ndjson)
    as_json = json.loads(body_of(client.get(EXPORT, {**params, "format": "json"})))
    assert as_json == ndjson
    header, *rows = list(csv.reader(io.StringIO(body_of(client.get(EXPORT, {**params, "format": "csv"})))))
    assert header == [*CONTRACT_FIELDS] and len(rows) == 2
    response = client.get(EXPORT, {**params, "format": "csv"})
    assert "attachment" in response["Content-Disposition"]


def test_events_export_needs_the_export_permission(viewer):
    store(event())
    assert client_for(viewer).get(EXPORT, {"scope": "events", "format": "csv"}).status_code == 403
    assert "export-csv" not in client_for(viewer).get(CHANGELIST).content.decode()


def test_events_export_of_a_bad_filter_says_so_and_exports_nothing(auditor):
    response = client_for(auditor).get(EXPORT, {"scope": "events", "format": "xml"})
    assert response.status_code == 302 and response["Location"].startswith(CHANGELIST)


def test_events_changelist_query_count_does_not_grow_at_200_rows(root):
    client = client_for(root)
    params = {"since": T0.isoformat(), "q": "s-"}

    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert client.get(CHANGELIST, params).status_code == 200
        return len(queries)

    store(*[event(f"type-{n}", session=f"s-{n}", source=f"src-{n}", at=n) for n in range(3)])
    few = count()
    store(*[event(f"type-{n % 11}", session=f"s-{n}", source=f"src-{n % 7}", at=n) for n in range(200)])
    assert count() == few


def test_export_permission_alone_does_not_open_the_events(django_user_model):
    user = django_user_model.objects.create_user("xena", password="pw", is_staff=True)
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="audit", codename="export_audit")
    )
    store(event())
    assert client_for(user).get(EXPORT, {"scope": "events", "format": "csv"}).status_code == 403
