"""The design document imports its subscribers from `events.subscribers`; they live in the audit app."""

from audit.subscribers import AuditLogger, MetricsCollector, audit_logger, metrics_collector

__all__ = ["AuditLogger", "MetricsCollector", "audit_logger", "metrics_collector"]
