"""Events: typed constructors, validation, and the contract's JSON structure."""

import json
import math
from datetime import UTC, datetime

import pytest

from events.agent_events import (
    AgentErrorOccurredEvent,
    AgentProcessingCompletedEvent,
    AgentProcessingStartedEvent,
    AgentSwitchedEvent,
)
from events.base import BaseEvent
from events.event_types import EventCategory, EventType
from events.session_events import MessageAddedEvent, SessionCreatedEvent
from events.tool_events import (
    HITLDecisionMadeEvent,
    ToolApprovalRequiredEvent,
    ToolExecutionCompletedEvent,
    ToolExecutionFailedEvent,
    ToolExecutionRequestedEvent,
)

CONTRACT_KEYS = [
    "event_id",
    "event_type",
    "event_category",
    "timestamp",
    "session_id",
    "correlation_id",
    "causation_id",
    "data",
    "source",
    "version",
]


def one_of_each() -> list[BaseEvent]:
    return [
        AgentSwitchedEvent(
            session_id="s", from_agent="orchestrator", to_agent="coder", reason="code", confidence="high"
        ),
        AgentProcessingStartedEvent(session_id="s", agent_type="coder", message="Sort a list"),
        AgentProcessingCompletedEvent(session_id="s", agent_type="coder", duration_ms=1500.5, success=True),
        AgentErrorOccurredEvent(
            session_id="s", agent_type="coder", error_message="nope", error_type="OSError"
        ),
        ToolExecutionRequestedEvent(
            session_id="s", tool_name="write_file", arguments={"path": "t.py"}, call_id="c1", agent="coder"
        ),
        ToolExecutionCompletedEvent(
            session_id="s", tool_name="write_file", call_id="c1", result={"ok": True}
        ),
        ToolExecutionFailedEvent(
            session_id="s", tool_name="write_file", call_id="c1", error_message="disk full"
        ),
        ToolApprovalRequiredEvent(
            session_id="s",
            tool_name="execute_command",
            arguments={"command": "rm -rf /tmp"},
            call_id="c2",
            reason="x",
        ),
        HITLDecisionMadeEvent(
            session_id="s",
            call_id="c2",
            decision="EDIT",
            tool_name="execute_command",
            original_args={"command": "rm -rf /tmp"},
            modified_args={"command": "ls /tmp"},
        ),
        SessionCreatedEvent(session_id="s", system_prompt="You are a helpful assistant"),
        MessageAddedEvent(session_id="s", role="user", content_length=100, agent_name="coder"),
    ]


CONTRACT_TYPES = {
    "agent_switched",
    "agent_processing_started",
    "agent_processing_completed",
    "agent_error_occurred",
    "tool_execution_requested",
    "tool_execution_completed",
    "tool_execution_failed",
    "tool_approval_required",
    "hitl_decision_made",
    "session_created",
    "message_added",
}


def test_every_contract_type_has_a_typed_event():
    assert {str(e.event_type) for e in one_of_each()} == CONTRACT_TYPES
    assert CONTRACT_TYPES <= {t.value for t in EventType}
    BaseEvent.from_dict(SessionCreatedEvent().to_dict())  # loads every typed event class
    assert all(BaseEvent.registry[t] for t in EventType)


@pytest.mark.parametrize("event", one_of_each(), ids=lambda e: str(e.event_type))
def test_json_round_trip_is_exact(event):
    as_json = json.loads(json.dumps(event.to_dict()))
    assert list(as_json) == CONTRACT_KEYS
    rebuilt = BaseEvent.from_dict(as_json)
    assert type(rebuilt) is type(event)
    assert rebuilt.to_dict() == event.to_dict()
    assert BaseEvent.from_json(event.to_json()) == event


def test_contract_field_formats():
    event = AgentSwitchedEvent(
        session_id="session-123",
        from_agent="orchestrator",
        to_agent="coder",
        timestamp=datetime(2026, 1, 21, 10, 0, tzinfo=UTC),
    )
    payload = event.to_dict()
    assert payload["timestamp"] == "2026-01-21T10:00:00Z"
    assert payload["event_type"] == "agent_switched" and payload["event_category"] == "agent"
    assert payload["version"] == "1.0"
    assert len(payload["event_id"]) == 36
    assert event.data["from_agent"] == "orchestrator"


def test_timestamps_are_utc_with_z():
    event = SessionCreatedEvent(session_id="s", timestamp="2026-01-21T12:00:00+02:00")
    assert event.to_dict()["timestamp"] == "2026-01-21T10:00:00Z"
    assert SessionCreatedEvent().to_dict()["timestamp"].endswith("Z")


def test_constructor_keywords_become_data_and_categories_follow_type():
    event = ToolApprovalRequiredEvent(tool_name="t", arguments={"a": 1}, call_id="c", reason="danger")
    assert event.data == {
        "tool_name": "t",
        "arguments": {"a": 1},
        "call_id": "c",
        "reason": "danger",
        "agent": None,
    }
    assert event.event_category == EventCategory.HITL
    assert AgentErrorOccurredEvent(agent_type="a", error_message="m").event_category == EventCategory.AGENT


def test_confidence_is_validated():
    for level in ("high", "medium", "low"):
        assert AgentSwitchedEvent(from_agent="a", to_agent="b", confidence=level).data["confidence"] == level
    with pytest.raises(ValueError, match="confidence"):
        AgentSwitchedEvent(from_agent="a", to_agent="b", confidence="certain")


@pytest.mark.parametrize(
    "build, fragment",
    [
        (lambda: AgentSwitchedEvent(to_agent="b"), "from_agent"),
        (lambda: AgentSwitchedEvent(from_agent="a", to_agent="b", colour="red"), "colour"),
        (lambda: AgentProcessingCompletedEvent(agent_type="a", duration_ms=-1), "duration_ms"),
        (lambda: AgentProcessingCompletedEvent(agent_type="a", duration_ms="fast"), "duration_ms"),
        (lambda: AgentProcessingCompletedEvent(agent_type="a", duration_ms=True), "duration_ms"),
        (lambda: HITLDecisionMadeEvent(call_id="c", decision="MAYBE", tool_name="t"), "decision"),
        (lambda: HITLDecisionMadeEvent(call_id="c", decision="EDIT", tool_name="t"), "modified_args"),
        (lambda: MessageAddedEvent(role="robot"), "role"),
        (lambda: ToolExecutionRequestedEvent(tool_name="t", call_id="c", arguments=["x"]), "arguments"),
        (lambda: BaseEvent("custom_thing"), "event_category"),
        (lambda: BaseEvent("custom_thing", "nonsense"), "event_category"),
        (lambda: SessionCreatedEvent(event_id="not-a-uuid"), "event_id"),
        (lambda: SessionCreatedEvent(timestamp="yesterday"), "timestamp"),
        (lambda: SessionCreatedEvent(session_id=42), "session_id"),
        (lambda: SessionCreatedEvent(session_id="s" * 256), "session_id"),
        (lambda: BaseEvent("t" * 101, "system"), "event_type"),
    ],
)
def test_bad_events_fail_when_built_naming_the_field(build, fragment):
    with pytest.raises((TypeError, ValueError), match=fragment):
        build()


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"when": datetime.now(UTC)}, r"data\['when'\]"),
        ({"outer": {"inner": {1, 2}}}, r"data\['outer'\]\['inner'\]"),
        ({"items": [1, object()]}, r"data\['items'\]\[1\]"),
        ({"ratio": math.nan}, r"data\['ratio'\]"),
        ({"ratio": math.inf}, r"data\['ratio'\]"),
        ({"nested": {3: "x"}}, r"data\['nested'\]"),
        ({"text": "nul\x00byte"}, r"data\['text'\]"),
        ({"text": "lone \ud800 surrogate"}, r"data\['text'\]"),
        ({"key\x00": 1}, r"data key"),
        ({"ключ\ud800": 1}, r"data key"),
        ({"deep": ["ok", {"text": "\x00"}]}, r"data\['deep'\]\[1\]\['text'\]"),
    ],
)
def test_data_that_json_cannot_carry_fails_when_built(data, fragment):
    with pytest.raises((TypeError, ValueError), match=fragment):
        BaseEvent("custom_thing", "system", data=data)


def test_custom_event_types_are_allowed_with_a_category():
    event = BaseEvent("deployment_started", EventCategory.SYSTEM, data={"version": "2"})
    rebuilt = BaseEvent.from_json(event.to_json())
    assert type(rebuilt) is BaseEvent
    assert rebuilt.event_type == "deployment_started" and rebuilt.event_category == "system"


def test_from_dict_rejects_unknown_fields_and_accepts_a_stored_position():
    payload = SessionCreatedEvent(session_id="s").to_dict()
    with pytest.raises(ValueError, match="colour"):
        BaseEvent.from_dict({**payload, "colour": "red"})
    stored = BaseEvent.from_dict({**payload, "position": 7})
    assert stored.position == 7 and stored.to_dict() == {**payload, "position": 7}
    with pytest.raises(ValueError, match="position"):
        BaseEvent.from_dict({**payload, "position": "seven"})


def test_from_dict_validates_typed_data():
    payload = AgentSwitchedEvent(from_agent="a", to_agent="b").to_dict()
    payload["data"]["confidence"] = "certain"
    with pytest.raises(ValueError, match="confidence"):
        BaseEvent.from_dict(payload)


def test_extra_data_keys_survive_a_round_trip():
    event = AgentSwitchedEvent(from_agent="a", to_agent="b")
    event.data["enriched_at"] = "2026-01-21T10:00:00"
    assert BaseEvent.from_json(event.to_json()).data["enriched_at"] == "2026-01-21T10:00:00"


def test_non_ascii_text_is_fine():
    event = AgentSwitchedEvent(from_agent="оркестратор", to_agent="кодер", reason="Требуется код 🙂")
    assert BaseEvent.from_json(event.to_json()) == event
    assert (
        BaseEvent("custom", "system", data={"ключ": {"вложенный": "текст"}}).data["ключ"]["вложенный"]
        == "текст"
    )
