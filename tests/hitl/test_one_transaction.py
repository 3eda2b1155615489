"""A change of an approval request's status commits with its stored event and its audit entry, or not
at all; a call_id belongs to the agent that made it; an agent has a bounded number of pending requests."""

import json

import pytest
from django.db import OperationalError
from django.test import Client

from accounts.services import api_token_issue
from audit.models import AuditEntry
from core.errors import ApplicationError
from events.event_store import event_store
from events.models import StoredEvent
from hitl.models import ApprovalRequest
from hitl.services import approval_cancel, approval_decide, approval_expire, approval_request

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def people():
    return {
        "agent": api_token_issue(username="agent-a", group="agents"),
        "other_agent": api_token_issue(username="agent-b", group="agents"),
        "operator": api_token_issue(username="olga", group="operators"),
    }


def ask(people, call_id="call-1", *, agent="agent", **extra):
    request, _ = approval_request(
        call_id=call_id,
        session_id="s-1",
        tool_name="delete_records",
        arguments=extra.pop("arguments", {"table": "users"}),
        requested_by=people[agent].user,
        **extra,
    )
    return request


def auth(issued) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {issued.token}"}


def records(call_id: str) -> dict[str, int]:
    """How many stored events and audit entries of each lifecycle type the request has."""
    counts: dict[str, int] = {}
    for event_type in ("tool_approval_required", "hitl_decision_made", "tool_approval_cancelled"):
        events = [
            e for e in StoredEvent.objects.filter(event_type=event_type) if e.data.get("call_id") == call_id
        ]
        entries = [
            a for a in AuditEntry.objects.filter(event_type=event_type) if a.data.get("call_id") == call_id
        ]
        counts[event_type] = len(events)
        counts[f"audit:{event_type}"] = len(entries)
    return counts


def test_a_request_is_stored_and_audited_in_the_transaction_that_creates_it(people):
    ask(people)
    # No waiting for the store's writer: the event and the audit entry committed with the row.
    assert records("call-1")["tool_approval_required"] == 1
    assert records("call-1")["audit:tool_approval_required"] == 1


@pytest.mark.parametrize("decision", ["APPROVE", "EDIT", "REJECT"])
def test_a_decision_is_stored_and_audited_in_its_own_transaction(people, decision):
    ask(people)
    approval_decide(
        call_id="call-1",
        user=people["operator"].user,
        decision=decision,
        modified_args={"table": "guests"} if decision == "EDIT" else None,
    )
    counts = records("call-1")
    assert counts["hitl_decision_made"] == 1 and counts["audit:hitl_decision_made"] == 1
    entry = AuditEntry.objects.get(event_type="hitl_decision_made")
    assert entry.actor == "olga" and entry.data["decision"] == decision


def test_when_the_record_cannot_be_written_the_decision_does_not_happen(people):
    ask(people)

    def database_gone(cursor, events):
        raise OperationalError("the database went away mid-transaction")

    event_store.add_batch_hook(database_gone)
    try:
        with pytest.raises(OperationalError):
            approval_decide(call_id="call-1", user=people["operator"].user, decision="APPROVE")
    finally:
        event_store._hooks.remove(database_gone)
    request = ApprovalRequest.objects.get(call_id="call-1")
    assert request.status == "pending" and request.decided_by is None
    assert records("call-1")["hitl_decision_made"] == 0 and records("call-1")["audit:hitl_decision_made"] == 0
    # And once the database is back the same decision goes through, with its record.
    approval_decide(call_id="call-1", user=people["operator"].user, decision="APPROVE")
    assert records("call-1")["audit:hitl_decision_made"] == 1


def test_expiry_and_cancellation_are_audited_with_their_change(people, settings):
    ask(people, "expires", timeout_s=0.01)
    ask(people, "withdrawn")
    import time

    time.sleep(0.03)
    assert approval_expire(call_id="expires") == 1
    approval_cancel(call_id="withdrawn", user=people["agent"].user)
    assert records("expires")["audit:hitl_decision_made"] == 1
    assert records("withdrawn")["audit:tool_approval_cancelled"] == 1


def deep(depth: int) -> str:
    return '{"x":' * depth + "1" + "}" * depth


@pytest.mark.parametrize(
    "body",
    [
        '{"decision": "EDIT", "modified_args": ' + deep(900) + "}",
        '{"decision": "EDIT", "modified_args": ' + deep(65) + "}",
        '{"decision": "REJECT", "comment": "\\ud800"}',
        '{"decision": "REJECT", "comment": "a\\u0000b"}',
        '{"decision": "EDIT", "modified_args": {"k\\u0000": 1}}',
        '{"decision": "EDIT", "modified_args": {"big": "' + "x" * 70_000 + '"}}',
    ],
)
def test_a_hostile_decision_over_rest_is_a_400_and_changes_nothing(people, body):
    ask(people)
    response = Client().post(
        "/api/hitl/requests/call-1/decision/",
        body,
        content_type="application/json",
        **auth(people["operator"]),
    )
    assert 400 <= response.status_code < 500, response.content[:300]
    assert ApprovalRequest.objects.get(call_id="call-1").status == "pending"
    assert records("call-1")["audit:hitl_decision_made"] == 0


def test_decided_requests_and_decision_audit_entries_stay_one_to_one(people):
    for n in range(6):
        ask(people, f"c-{n}")
    client = Client()
    for n, decision in enumerate(["APPROVE", "REJECT", "EDIT"]):
        body: dict[str, object] = {"decision": decision}
        if decision == "EDIT":
            body["modified_args"] = {"table": "guests"}
        response = client.post(
            f"/api/hitl/requests/c-{n}/decision/",
            json.dumps(body),
            content_type="application/json",
            **auth(people["operator"]),
        )
        assert response.status_code == 200
    approval_cancel(call_id="c-3", user=people["agent"].user)
    decided = ApprovalRequest.objects.exclude(status__in=["pending", "cancelled"]).count()
    assert decided == 3
    assert AuditEntry.objects.filter(event_type="hitl_decision_made").count() == decided


# call_id ownership and the pending cap


def test_another_agent_reusing_a_call_id_gets_409_and_learns_nothing(people):
    ask(people, "mine", arguments={"table": "users", "secret": "s3"})
    approval_decide(call_id="mine", user=people["operator"].user, decision="REJECT", comment="private note")
    client = Client()
    body = {
        "session_id": "s-1",
        "call_id": "mine",
        "tool_name": "delete_records",
        "arguments": {"table": "users", "secret": "s3"},
    }
    response = client.post(
        "/api/hitl/requests/",
        json.dumps(body),
        content_type="application/json",
        **auth(people["other_agent"]),
    )
    assert response.status_code == 409
    assert response.json()["code"] == "call_id_conflict"
    text = response.content.decode()
    for secret in ("olga", "private note", "s3", "rejected", "agent-a"):
        assert secret not in text
    # The owner still gets its request back.
    own = client.post(
        "/api/hitl/requests/", json.dumps(body), content_type="application/json", **auth(people["agent"])
    )
    assert own.status_code == 200 and own.json()["decided_by"] == "olga"


def test_an_agent_has_at_most_the_configured_number_of_pending_requests(people, settings):
    settings.HITL_MAX_PENDING_PER_AGENT = 3
    for n in range(3):
        ask(people, f"p-{n}")
    with pytest.raises(ApplicationError) as refused:
        ask(people, "p-3")
    assert refused.value.status == 429 and refused.value.code == "too_many_pending"
    # Other agents are not held back, and a decision frees a place.
    ask(people, "other-0", agent="other_agent")
    approval_decide(call_id="p-0", user=people["operator"].user, decision="APPROVE")
    ask(people, "p-3")
    response = Client().post(
        "/api/hitl/requests/",
        json.dumps({"session_id": "s", "call_id": "p-4", "tool_name": "t", "arguments": {}}),
        content_type="application/json",
        **auth(people["agent"]),
    )
    assert response.status_code == 429 and response.json()["code"] == "too_many_pending"
