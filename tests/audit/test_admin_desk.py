"""Issue 14, the audit trail's admin for auditors: what each decision was (tool, decision, status,
actor, the expiry where nobody acted), a date range, an export of the list's rows with actor and hashes,
and a changelist whose queries do not grow with its rows."""

import json
import re
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from audit.models import AuditEntry
from events.base import BaseEvent

from . import test_admin as base
from .test_admin import CHANGELIST, T0, client_for, shown, store, switched

pytestmark = pytest.mark.django_db(transaction=True)

EXPORT = reverse("admin:audit_auditentry_export")
root, viewer, auditor, only_seeded_events = base.root, base.viewer, base.auditor, base.only_seeded_events


def decision(tool: str, verdict: str, status: str, *, actor=None, channel="admin", at=0) -> BaseEvent:
    event = BaseEvent(
        "hitl_decision_made",
        "hitl",
        session_id="session-1",
        timestamp=T0 + timedelta(seconds=at),
        data={"tool_name": tool, "decision": verdict, "status": status, "channel": channel, "call_id": tool},
    )
    event.actor = actor
    return event


def body_of(response) -> str:
    """A streamed export's text (the view streams from an async iterator, as under Daphne)."""
    assert response.status_code == 200, response.status_code

    async def read() -> bytes:
        return b"".join([chunk async for chunk in response.streaming_content])

    return async_to_sync(read)().decode()


def cells(html: str, column: str) -> list[str]:
    return re.findall(rf'<td class="field-{column}">([^<]*)</td>', html)


def test_audit_list_shows_tool_decision_status_and_actor_so_decisions_differ(root):
    store(
        decision("refund_order", "APPROVE", "approved", actor="olga"),
        decision("shell", "REJECT", "rejected", actor="bob", at=1),
        decision("delete_db", "REJECT", "expired", channel="expiry", at=2),
    )
    html = client_for(root).get(CHANGELIST).content.decode()

    assert cells(html, "tool") == ["delete_db", "shell", "refund_order"]  # newest first
    # The decision, with the request's status where it says more than the decision does.
    assert cells(html, "decision") == ["REJECT (expired)", "REJECT", "APPROVE"]
    assert cells(html, "actor_shown") == ["expiry", "bob", "olga"]  # the expiry, not a blank


def test_audit_date_range_filter_reads_since_and_until_as_the_api(root):
    store(switched(), decision("x", "APPROVE", "approved", at=3600))
    first, second = AuditEntry.objects.order_by("id").values_list("id", flat=True)
    client = client_for(root)
    since = (T0 + timedelta(seconds=1)).isoformat()

    assert shown(client.get(CHANGELIST, {"since": since})) == [second]
    assert shown(client.get(CHANGELIST, {"until": since})) == [first]


def test_audit_export_has_the_lists_rows_with_actor_and_hashes(auditor):
    store(
        decision("refund_order", "APPROVE", "approved", actor="olga"),
        decision("shell", "REJECT", "rejected", actor="bob", at=3600),
    )
    client = client_for(auditor)
    html = client.get(CHANGELIST, {"actor": "bob"}).content.decode()
    assert 'data-testid="export-ndjson"' in html and "actor=bob" in html

    response = client.get(EXPORT, {"scope": "audit", "format": "ndjson", "actor": "bob"})
    lines = [json.loads(line) for line in body_of(response).splitlines()]
    rows = [line for line in lines if "event_id" in line]
    assert [(row["actor"], row["data"]["tool_name"]) for row in rows] == [("bob", "shell")]
    assert rows[0]["hash"] and "prev_hash" in rows[0]


def test_audit_export_needs_the_export_permission(viewer):
    assert client_for(viewer).get(EXPORT, {"scope": "audit", "format": "csv"}).status_code == 403


def test_audit_changelist_query_count_does_not_grow_at_200_rows(root):
    client = client_for(root)
    params = {"since": T0.isoformat()}

    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert client.get(CHANGELIST, params).status_code == 200
        return len(queries)

    store(*[decision(f"tool-{n}", "APPROVE", "approved", actor=f"u{n}", at=n) for n in range(3)])
    few = count()
    store(*[decision(f"tool-{n % 13}", "REJECT", "rejected", actor=f"u{n % 5}", at=n) for n in range(200)])
    assert count() == few
