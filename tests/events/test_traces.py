"""Traces of gated tool calls: the approval request and its decision sit under the tool call they
gate, and a deep trace stays as wide as the page."""

import re
import uuid

import pytest
from django.test import Client
from django.urls import reverse

from events.base import BaseEvent
from events.event_store import event_store
from events.models import StoredEvent
from events.selectors import with_summary
from events.traces import MAX_INDENT, build_trace
from hitl.services import approval_cancel, approval_decide, approval_request

pytestmark = pytest.mark.django_db


def trace_url(position: int) -> str:
    return reverse("admin:events_storedevent_event_trace", args=[position])


@pytest.fixture
def root(django_user_model):
    return django_user_model.objects.create_superuser("root", "root@example.com", "pw")


@pytest.fixture
def agent(django_user_model):
    return django_user_model.objects.create_user("agent-1", password="pw")


def trace_of(correlation_id: str) -> list[tuple[str, int]]:
    rows = list(with_summary(StoredEvent.objects.filter(correlation_id=correlation_id).order_by("position")))
    return [(step.row["event_type"], step.depth) for step in build_trace(rows)]


def tool_call(correlation_id: str) -> BaseEvent:
    """The agent's tool_execution_requested, stored as ingest stores it."""
    requested = BaseEvent(
        "tool_execution_requested",
        "tool",
        session_id="s-1",
        correlation_id=correlation_id,
        data={"tool_name": "write_file", "call_id": correlation_id},
    )
    event_store._write_batch([requested])
    return requested


@pytest.mark.parametrize("decision", ["APPROVE", "EDIT", "REJECT"])
def test_a_request_and_its_decision_are_children_of_the_tool_call(root, agent, decision):
    requested = tool_call("call-1")
    approval_request(
        call_id="call-1",
        session_id="s-1",
        tool_name="write_file",
        arguments={"path": "/tmp/x"},
        correlation_id="call-1",
        causation_id=requested.event_id,
        requested_by=agent,
    )
    edited = {"path": "/tmp/y"} if decision == "EDIT" else None
    approval_decide(call_id="call-1", user=root, decision=decision, modified_args=edited)

    assert trace_of("call-1") == [
        ("tool_execution_requested", 0),
        ("tool_approval_required", 1),
        ("hitl_decision_made", 2),
    ]


def test_a_rule_decided_and_a_cancelled_request_hang_under_their_call_too(root, agent):
    from hitl.policies import rule_create

    rule_create(data={"name": "reads", "tool": "read_*", "action": "approve"}, user=root)
    for call_id, tool in (("call-read", "read_file"), ("call-gone", "write_file")):
        requested = tool_call(call_id)
        approval_request(
            call_id=call_id,
            session_id="s-1",
            tool_name=tool,
            arguments={},
            correlation_id=call_id,
            causation_id=requested.event_id,
            requested_by=agent,
        )
    approval_cancel(call_id="call-gone", user=agent)

    assert trace_of("call-read") == [
        ("tool_execution_requested", 0),
        ("tool_approval_required", 1),
        ("hitl_decision_made", 2),
    ]
    assert trace_of("call-gone") == [
        ("tool_execution_requested", 0),
        ("tool_approval_required", 1),
        ("tool_approval_cancelled", 2),
    ]


def test_without_a_causation_id_the_request_is_a_root_and_its_decision_its_child(root, agent):
    approval_request(
        call_id="call-2", session_id="s-1", tool_name="write_file", arguments={}, correlation_id="c-2"
    )
    approval_decide(call_id="call-2", user=root, decision="REJECT")
    assert trace_of("c-2") == [("tool_approval_required", 0), ("hitl_decision_made", 1)]


def test_a_trace_twenty_deep_caps_its_indent_and_numbers_the_depth(root):
    chain: list[BaseEvent] = []
    for _ in range(21):
        chain.append(
            BaseEvent(
                "step",
                "agent",
                correlation_id="deep",
                causation_id=chain[-1].event_id if chain else None,
                data={"tool_name": "x" * 300},  # a long value wraps
            )
        )
    positions = event_store._write_batch(chain)
    client = Client()
    client.force_login(root)

    html = client.get(trace_url(positions[-1])).content.decode()

    indents = [float(x) for x in re.findall(r'class="events-event" style="padding-left: ([\d.]+)em;"', html)]
    assert len(indents) == 21
    assert max(indents) == indents[MAX_INDENT] <= 8  # stops growing at MAX_INDENT levels
    depths = re.findall(r'<span class="events-depth" title="depth (\d+)">\d+</span>', html)
    assert depths == [str(n) for n in range(MAX_INDENT + 1, 21)]
    assert "overflow-wrap: anywhere" in html


def test_an_uppercase_causation_id_is_stored_canonical(agent):
    cause = uuid.uuid4()
    from hitl.inputs import ApprovalRequestIn, validated

    data = validated(
        ApprovalRequestIn,
        {"session_id": "s", "call_id": "c", "tool_name": "t", "causation_id": str(cause).upper()},
    )
    assert data["causation_id"] == str(cause)
