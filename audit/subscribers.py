"""The design document's two subscribers: metrics from agent and tool events, and the audit log.

Both live in memory in this version, bounded: the metrics are counters keyed by agent and tool, the
audit log keeps the newest AUDIT_LOG_LIMIT entries.
"""

from __future__ import annotations

import copy
import logging
from collections import deque
from typing import Any

from events.base import BaseEvent
from events.event_bus import EventBus, event_bus
from events.event_types import EventType

logger = logging.getLogger("audit")

AUDIT_LOG_LIMIT = 10_000
HITL_DECISIONS = ("APPROVE", "EDIT", "REJECT")
# The critical events the design document has the audit logger keep.
AUDITED_EVENT_TYPES = (
    EventType.AGENT_SWITCHED,
    EventType.HITL_DECISION_MADE,
    EventType.AGENT_ERROR_OCCURRED,
    EventType.TOOL_EXECUTION_FAILED,
    EventType.TOOL_APPROVAL_REQUIRED,
)
METRICS_PRIORITY = 50
AUDIT_PRIORITY = 100


class MetricsCollector:
    """Counts agent switches, agent processing, tool executions and HITL decisions."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every counter."""
        self._metrics: dict[str, dict[str, Any]] = {
            "agent_switches": {},
            "agent_processing": {},
            "tool_executions": {},
            "hitl_decisions": {},
        }

    def subscribe(self, bus: EventBus = event_bus) -> None:
        """Subscribe to the events the metrics come from (once per bus)."""
        handlers = {
            EventType.AGENT_SWITCHED: self._on_agent_switched,
            EventType.AGENT_PROCESSING_COMPLETED: self._on_agent_processing_completed,
            EventType.TOOL_EXECUTION_REQUESTED: self._on_tool_event,
            EventType.TOOL_EXECUTION_COMPLETED: self._on_tool_event,
            EventType.TOOL_EXECUTION_FAILED: self._on_tool_event,
            EventType.HITL_DECISION_MADE: self._on_hitl_decision,
        }
        _subscribe_once(bus, handlers, METRICS_PRIORITY)

    # Handlers

    async def _on_agent_switched(self, event: BaseEvent) -> None:
        key = f"{event.data.get('from_agent')}_to_{event.data.get('to_agent')}"
        switches = self._metrics["agent_switches"]
        switches[key] = switches.get(key, 0) + 1

    async def _on_agent_processing_completed(self, event: BaseEvent) -> None:
        agent = str(event.data.get("agent_type"))
        stats = self._metrics["agent_processing"].setdefault(
            agent, {"count": 0, "total_duration_ms": 0, "success_count": 0, "failure_count": 0}
        )
        stats["count"] += 1
        duration = event.data.get("duration_ms")
        if isinstance(duration, int | float) and not isinstance(duration, bool):
            stats["total_duration_ms"] += duration
        if event.data.get("success", True):
            stats["success_count"] += 1
        else:
            stats["failure_count"] += 1

    async def _on_tool_event(self, event: BaseEvent) -> None:
        tool = str(event.data.get("tool_name"))
        stats = self._metrics["tool_executions"].setdefault(
            tool, {"requested": 0, "completed": 0, "failed": 0}
        )
        if event.event_type == EventType.TOOL_EXECUTION_REQUESTED:
            stats["requested"] += 1
        elif event.event_type == EventType.TOOL_EXECUTION_COMPLETED:
            stats["completed"] += 1
        else:
            stats["failed"] += 1

    async def _on_hitl_decision(self, event: BaseEvent) -> None:
        tool = str(event.data.get("tool_name"))
        decision = str(event.data.get("decision"))
        stats = self._metrics["hitl_decisions"].setdefault(tool, dict.fromkeys(HITL_DECISIONS, 0))
        stats[decision] = stats.get(decision, 0) + 1

    # Reading

    def get_metrics(self) -> dict[str, dict[str, Any]]:
        """Every metric, in the design document's structure (a copy)."""
        return copy.deepcopy(self._metrics)

    def get_agent_switch_count(self, from_agent: str, to_agent: str) -> int:
        """How many times the conversation went from `from_agent` to `to_agent`."""
        return int(self._metrics["agent_switches"].get(f"{from_agent}_to_{to_agent}", 0))

    def get_agent_avg_duration(self, agent: str) -> float:
        """The mean processing time of `agent` in milliseconds (0.0 before its first completion)."""
        stats = self._metrics["agent_processing"].get(agent)
        if not stats or not stats["count"]:
            return 0.0
        return float(stats["total_duration_ms"]) / stats["count"]

    def get_tool_success_rate(self, tool_name: str) -> float:
        """Completed over finished (completed + failed) executions of the tool, from 0.0 to 1.0."""
        stats = self._metrics["tool_executions"].get(tool_name)
        if not stats:
            return 0.0
        finished = stats["completed"] + stats["failed"]
        return stats["completed"] / finished if finished else 0.0


class AuditLogger:
    """Keeps the critical events (agent switches, HITL decisions, agent errors, tool failures, approvals)."""

    def __init__(self, limit: int = AUDIT_LOG_LIMIT) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=limit)

    def reset(self) -> None:
        """Forget every entry."""
        self._entries.clear()

    def subscribe(self, bus: EventBus = event_bus) -> None:
        """Subscribe to the audited event types (once per bus)."""
        _subscribe_once(bus, dict.fromkeys(AUDITED_EVENT_TYPES, self._on_event), AUDIT_PRIORITY)

    async def _on_event(self, event: BaseEvent) -> None:
        entry = event.to_dict()
        entry["data"] = copy.deepcopy(event.data)
        self._entries.append(entry)
        logger.info(
            "audit %s session=%s correlation=%s data=%s",
            event.event_type,
            event.session_id,
            event.correlation_id,
            entry["data"],
        )

    def get_audit_log(
        self, session_id: str | None = None, event_type: str | None = None, limit: int | None = 100
    ) -> list[dict[str, Any]]:
        """The newest entries first, filtered by session and type, at most `limit` of them."""
        wanted_type = None if event_type is None else str(event_type)
        result: list[dict[str, Any]] = []
        for entry in reversed(self._entries):
            if session_id is not None and entry["session_id"] != session_id:
                continue
            if wanted_type is not None and entry["event_type"] != wanted_type:
                continue
            result.append(copy.deepcopy(entry))
            if limit is not None and len(result) >= limit:
                break
        return result


def _subscribe_once(bus: EventBus, handlers: dict[Any, Any], priority: int) -> None:
    present = {(sub.event_type, sub.handler) for sub in bus.subscriptions}
    for event_type, handler in handlers.items():
        if (str(event_type), handler) not in present:
            bus.subscribe(event_type=event_type, handler=handler, priority=priority)


metrics_collector = MetricsCollector()
audit_logger = AuditLogger()


def install_subscribers(bus: EventBus = event_bus) -> None:
    """Subscribe the metrics collector and the audit logger (safe to call again)."""
    metrics_collector.subscribe(bus)
    audit_logger.subscribe(bus)
