"""The metrics collector and the audit logger, kept by the store, after a scripted agent session."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from audit.subscribers import MetricsCollector, audit_logger, metrics_collector
from events.agent_events import (
    AgentErrorOccurredEvent,
    AgentProcessingCompletedEvent,
    AgentProcessingStartedEvent,
    AgentSwitchedEvent,
)
from events.event_bus import event_bus
from events.event_store import event_store
from events.session_events import MessageAddedEvent, SessionCreatedEvent
from events.tool_events import (
    HITLDecisionMadeEvent,
    ToolApprovalRequiredEvent,
    ToolExecutionCompletedEvent,
    ToolExecutionFailedEvent,
    ToolExecutionRequestedEvent,
)


async def scripted_session(session_id: str = "session-123") -> None:
    s = session_id
    script = [
        SessionCreatedEvent(session_id=s, system_prompt="You are a helpful assistant"),
        MessageAddedEvent(session_id=s, role="user", content_length=42),
        AgentSwitchedEvent(session_id=s, from_agent="orchestrator", to_agent="coder", confidence="high"),
        AgentProcessingStartedEvent(session_id=s, agent_type="coder", message="write tests"),
        ToolExecutionRequestedEvent(
            session_id=s, tool_name="write_file", arguments={"path": "a.py"}, call_id="c1"
        ),
        ToolExecutionCompletedEvent(session_id=s, tool_name="write_file", call_id="c1"),
        ToolExecutionRequestedEvent(
            session_id=s, tool_name="write_file", arguments={"path": "/etc"}, call_id="c2"
        ),
        ToolExecutionFailedEvent(session_id=s, tool_name="write_file", call_id="c2", error_message="denied"),
        ToolApprovalRequiredEvent(
            session_id=s, tool_name="execute_command", arguments={"command": "rm -rf /tmp"}, call_id="c3"
        ),
        HITLDecisionMadeEvent(
            session_id=s,
            call_id="c3",
            decision="EDIT",
            tool_name="execute_command",
            original_args={"command": "rm -rf /tmp"},
            modified_args={"command": "rm -rf /tmp/x"},
        ),
        HITLDecisionMadeEvent(session_id=s, call_id="c4", decision="APPROVE", tool_name="execute_command"),
        AgentProcessingCompletedEvent(session_id=s, agent_type="coder", duration_ms=1000, success=True),
        AgentErrorOccurredEvent(
            session_id=s, agent_type="coder", error_message="boom", error_type="RuntimeError"
        ),
        AgentProcessingCompletedEvent(session_id=s, agent_type="coder", duration_ms=2000.5, success=False),
        AgentSwitchedEvent(session_id=s, from_agent="coder", to_agent="debug", confidence="low"),
        AgentSwitchedEvent(session_id=s, from_agent="orchestrator", to_agent="coder", confidence="medium"),
    ]
    for event in script:
        await event_bus.publish(event)
    await event_bus.drain()
    await event_store.flush()


EXPECTED_METRICS = {
    "agent_switches": {"orchestrator_to_coder": 2, "coder_to_debug": 1},
    "agent_processing": {
        "coder": {"count": 2, "total_duration_ms": 3000.5, "success_count": 1, "failure_count": 1}
    },
    "tool_executions": {"write_file": {"requested": 2, "completed": 1, "failed": 1}},
    "hitl_decisions": {"execute_command": {"APPROVE": 1, "EDIT": 1, "REJECT": 0}},
}

pytestmark = pytest.mark.django_db(transaction=True)


async def test_metrics_structure_after_a_scripted_session():
    await scripted_session()
    assert metrics_collector.get_metrics() == EXPECTED_METRICS
    assert await metrics_collector.aget_metrics() == EXPECTED_METRICS
    assert metrics_collector.get_agent_switch_count("orchestrator", "coder") == 2
    assert metrics_collector.get_agent_switch_count("coder", "orchestrator") == 0
    assert metrics_collector.get_agent_avg_duration("coder") == pytest.approx(1500.25)
    assert metrics_collector.get_agent_avg_duration("nobody") == 0.0
    assert metrics_collector.get_tool_success_rate("write_file") == 0.5
    assert metrics_collector.get_tool_success_rate("never_ran") == 0.0


async def test_publishing_the_same_events_again_does_not_count_twice():
    await scripted_session()
    stored = await event_store.get_events(session_id="session-123")
    for event in stored:
        event.position = None
        await event_bus.publish(event)  # the same event ids, not marked as replays
    await event_bus.drain()
    await event_store.flush()
    assert metrics_collector.get_metrics() == EXPECTED_METRICS
    assert len(audit_logger.get_audit_log(limit=None)) == 8


def _database_url() -> str:
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


async def test_metrics_and_audit_log_survive_a_restart():
    """Another process (a restarted server) reads the same metrics and audit log from the database."""
    await scripted_session()
    before = metrics_collector.get_metrics()
    log_before = audit_logger.get_audit_log(limit=None)
    code = (
        "import json; from audit.subscribers import metrics_collector, audit_logger; "
        "print(json.dumps([metrics_collector.get_metrics(), audit_logger.get_audit_log(limit=None)]))"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=root,
        env={**os.environ, "DATABASE_URL": _database_url()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    after, log_after = json.loads(result.stdout.strip().splitlines()[-1])
    assert after == before == EXPECTED_METRICS
    assert log_after == log_before and len(log_after) == 8
    assert MetricsCollector().get_metrics() == before


async def test_audit_log_keeps_exactly_the_documented_critical_events():
    await scripted_session()
    await scripted_session("other-session")
    log = audit_logger.get_audit_log(session_id="session-123", limit=None)
    assert [entry["event_type"] for entry in log] == [  # newest first
        "agent_switched",
        "agent_switched",
        "agent_error_occurred",
        "hitl_decision_made",
        "hitl_decision_made",
        "tool_approval_required",
        "tool_execution_failed",
        "agent_switched",
    ]
    assert log[-1]["data"]["to_agent"] == "coder" and log[-1]["session_id"] == "session-123"
    assert log[-1]["position"] is not None and log[-1]["hash"]
    only_switches = audit_logger.get_audit_log(session_id="session-123", event_type="agent_switched", limit=2)
    assert [entry["data"]["to_agent"] for entry in only_switches] == ["coder", "debug"]
    assert len(audit_logger.get_audit_log(limit=None)) == 16
    assert len(audit_logger.get_audit_log(limit=5)) == 5


def test_subscribing_twice_does_not_double_subscribe():
    before = len(event_bus.subscriptions)
    metrics_collector.subscribe(event_bus)
    audit_logger.subscribe(event_bus)
    assert len(event_bus.subscriptions) == before
