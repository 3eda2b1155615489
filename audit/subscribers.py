"""The design document's two subscribers, durable: their data is written by the event store.

The store's writer calls their batch hooks inside each batch's transaction, so the metric counters and
the audit trail count every stored event exactly once, survive a restart, and include the events of
every process sharing the database. The readers below keep the design document's methods.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import Any, TypeVar

from django.db import close_old_connections

from events.event_bus import EventBus, event_bus
from events.event_store import event_store

from .services import HITL_DECISIONS, audit_record_events, metrics_record_events

T = TypeVar("T")
DEFAULT_AUDIT_LIMIT = 100
_DEFAULTS: dict[str, dict[str, float]] = {
    "agent_processing": {"count": 0, "total_duration_ms": 0, "success_count": 0, "failure_count": 0},
    "tool_executions": {"requested": 0, "completed": 0, "failed": 0},
    "hitl_decisions": dict.fromkeys(HITL_DECISIONS, 0),
}


def _read(fn: Callable[[], T]) -> T:
    """Run a database read from sync code, or, called from inside an event loop, in a worker thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn()

    def in_thread() -> T:
        close_old_connections()
        try:
            return fn()
        finally:
            close_old_connections()

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(in_thread).result()


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


class MetricsCollector:
    """Agent switches, agent processing, tool executions and HITL decisions, from the store."""

    def subscribe(self, bus: EventBus = event_bus) -> None:
        """Make sure the store persists the bus's events and keeps the counters (idempotent)."""
        event_store.add_batch_hook(metrics_record_events)
        event_store.subscribe(bus)

    def get_metrics(self) -> dict[str, dict[str, Any]]:
        """Every metric, in the design document's structure."""
        return _read(self._load)

    async def aget_metrics(self) -> dict[str, dict[str, Any]]:
        """get_metrics for async code."""
        from channels.db import database_sync_to_async

        return await database_sync_to_async(self._load, thread_sensitive=False)()

    @staticmethod
    def _load() -> dict[str, dict[str, Any]]:
        from .models import MetricCounter

        metrics: dict[str, dict[str, Any]] = {
            "agent_switches": {},
            "agent_processing": {},
            "tool_executions": {},
            "hitl_decisions": {},
        }
        for metric, key, field, value in MetricCounter.objects.order_by("id").values_list(
            "metric", "key", "field", "value"
        ):
            if metric == "agent_switches":
                metrics[metric][key] = _number(value)
                continue
            group = metrics.setdefault(metric, {})
            entry = group.setdefault(key, dict(_DEFAULTS.get(metric, {})))
            entry[field] = _number(value)
        return metrics

    def get_agent_switch_count(self, from_agent: str, to_agent: str) -> int:
        """How many times the conversation went from `from_agent` to `to_agent`."""
        return int(self.get_metrics()["agent_switches"].get(f"{from_agent}_to_{to_agent}", 0))

    def get_agent_avg_duration(self, agent: str) -> float:
        """The mean processing time of `agent` in milliseconds (0.0 before its first completion)."""
        stats = self.get_metrics()["agent_processing"].get(agent)
        if not stats or not stats["count"]:
            return 0.0
        return float(stats["total_duration_ms"]) / stats["count"]

    def get_tool_success_rate(self, tool_name: str) -> float:
        """Completed over finished (completed + failed) executions of the tool, from 0.0 to 1.0."""
        stats = self.get_metrics()["tool_executions"].get(tool_name)
        if not stats:
            return 0.0
        finished = stats["completed"] + stats["failed"]
        return stats["completed"] / finished if finished else 0.0


class AuditLogger:
    """The critical events, read from the tamper-evident audit trail."""

    def subscribe(self, bus: EventBus = event_bus) -> None:
        """Make sure the store persists the bus's events and chains the critical ones (idempotent)."""
        event_store.add_batch_hook(audit_record_events)
        event_store.subscribe(bus)

    def get_audit_log(
        self,
        session_id: str | None = None,
        event_type: str | None = None,
        limit: int | None = DEFAULT_AUDIT_LIMIT,
    ) -> list[dict[str, Any]]:
        """The newest entries first, filtered by session and type, at most `limit` of them."""
        from .selectors import audit_entries

        return _read(lambda: audit_entries(session_id=session_id, event_type=event_type, limit=limit))


metrics_collector = MetricsCollector()
audit_logger = AuditLogger()


def install_subscribers(bus: EventBus = event_bus) -> None:
    """Subscribe the store and its audit and metrics hooks to `bus` (safe to call again)."""
    metrics_collector.subscribe(bus)
    audit_logger.subscribe(bus)
