"""GET /metrics in the Prometheus text format (0.0.4), and the request-latency middleware behind it.

Written by hand rather than with prometheus_client: a dozen families, rendered from the bus's and the
store's own counters at scrape time, need no registry, and the format is small (HELP and TYPE lines,
then `name{label="value"} number` samples).

What the families count, and where from:

- the bus (`event_bus.get_stats()`) and the store's writer (`event_store.get_stats()`): this process's
  counters since it started (Prometheus' `rate()` handles the reset at a restart);
- `eventbus_events_stored`: the highest committed position, read from the primary key's index (the
  positions are handed out without gaps, so it is the number of events ever stored, by every process);
- `eventbus_approval_requests`: approval requests by status, one GROUP BY served by the status indexes;
- `eventbus_http_request_duration_seconds`: a histogram per view, method and status class, recorded by
  RequestLatencyMiddleware. Its labels stay bounded: the view's URL name (never the raw path), a known
  method or `other`, and the status class.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.db.models import Max
from django.http import HttpRequest, HttpResponseBase

from events.event_bus import event_bus
from events.event_store import event_store
from events.event_types import EventType
from events.live import live_feed

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "eventbus"
# Seconds; the default buckets of the Prometheus client libraries.
LATENCY_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_VIEW = "unmatched"  # a path no URL pattern resolves (a 404 before any view)
OTHER = "other"
_KNOWN_EVENT_TYPES = frozenset(str(member.value) for member in EventType)


def metrics_public() -> bool:
    """Whether GET /metrics answers anyone (METRICS_PUBLIC, default true) or only users who may view."""
    return bool(getattr(settings, "METRICS_PUBLIC", True))


# The text format


def escape_label_value(value: str) -> str:
    """A label value as the text format quotes it: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value: integers without a fraction, infinities and NaN as the format spells them."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


Labels = tuple[tuple[str, str], ...]


@dataclass
class Family:
    """One metric family: its name, type, help and samples (a suffix such as `_bucket`, labels, value)."""

    name: str
    type: str
    help: str
    samples: list[tuple[str, Labels, float]] = field(default_factory=list)

    def add(self, value: float, suffix: str = "", **labels: str) -> Family:
        self.samples.append((suffix, tuple(labels.items()), value))
        return self


def render(families: Iterable[Family]) -> str:
    """The families in the Prometheus text exposition format, version 0.0.4."""
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.type}")
        for suffix, labels, value in family.samples:
            label_text = ",".join(f'{key}="{escape_label_value(str(item))}"' for key, item in labels)
            selector = f"{{{label_text}}}" if label_text else ""
            lines.append(f"{family.name}{suffix}{selector} {format_value(value)}")
    return "\n".join(lines) + "\n"


# Request latencies


class LatencyHistograms:
    """Request durations per (view, method, status class), in fixed buckets; safe across threads."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self._lock = threading.Lock()
        # (view, method, status class) -> (requests per bucket, not cumulative, the last one above every
        # bound; total seconds)
        self._series: dict[tuple[str, str, str], tuple[list[int], list[float]]] = {}

    def observe(self, view: str, method: str, status_class: str, seconds: float) -> None:
        """Count one request that took `seconds`."""
        index = bisect.bisect_left(self.buckets, seconds)  # the first bound >= seconds: `le` is inclusive
        key = (view, method, status_class)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = ([0] * (len(self.buckets) + 1), [0.0])
            series[0][index] += 1
            series[1][0] += seconds

    def reset(self) -> None:
        """Forget every observation."""
        with self._lock:
            self._series = {}

    def family(self) -> Family:
        """The histogram family: cumulative `_bucket` samples, `_sum` and `_count` per series."""
        result = Family(
            f"{PREFIX}_http_request_duration_seconds",
            "histogram",
            "Time from a request's arrival to its response's headers, by view (URL name), method and "
            "status class.",
        )
        with self._lock:
            snapshot = sorted((key, list(counts), total[0]) for key, (counts, total) in self._series.items())
        for (view, method, status_class), counts, seconds in snapshot:
            labels = {"view": view, "method": method, "status": status_class}
            cumulative = 0
            for bound, count in zip((*self.buckets, math.inf), counts, strict=True):
                cumulative += count
                result.add(cumulative, "_bucket", **labels, le=format_value(bound))
            result.add(seconds, "_sum", **labels)
            result.add(cumulative, "_count", **labels)
        return result


request_latencies = LatencyHistograms()


def _view_label(request: HttpRequest) -> str:
    match = getattr(request, "resolver_match", None)
    if match is None:
        return UNMATCHED_VIEW
    # The URL name (with its namespace, e.g. "admin:index"): one per pattern, never the raw path.
    return match.view_name or match.route or UNMATCHED_VIEW


def _record(request: HttpRequest, response: HttpResponseBase, started: float) -> None:
    method = request.method if request.method in KNOWN_METHODS else OTHER
    status_class = f"{response.status_code // 100}xx"
    request_latencies.observe(_view_label(request), str(method), status_class, time.perf_counter() - started)


def observe_request(view: str, method: str, status: int, seconds: float) -> None:
    """Count a request an ASGI path beside Django answered (core.asgi_paths.request_observers)."""
    request_latencies.observe(
        view, method if method in KNOWN_METHODS else OTHER, f"{status // 100}xx", seconds
    )


class RequestLatencyMiddleware:
    """Times every request into `request_latencies`; async-capable, so ASGI requests make no thread hop.

    First in MIDDLEWARE, so the time includes the other middleware. A streamed response counts until
    its headers are ready: the time to the first byte, not the whole download.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if self.is_async:
            return self.__acall__(request)
        started = time.perf_counter()
        response: HttpResponseBase = self.get_response(request)
        _record(request, response, started)
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        started = time.perf_counter()
        response: HttpResponseBase = await self.get_response(request)
        _record(request, response, started)
        return response


# Reads (synchronous: the views run them in a worker thread)


def approvals_by_status(rows: list[tuple[str, str, int]] | None = None) -> dict[str, int]:
    """How many approval requests have each status, every status present (0 when none)."""
    from hitl.models import ApprovalStatus
    from hitl.selectors import approval_counts

    counts = dict.fromkeys(ApprovalStatus.values, 0)
    for _, status, count in approval_counts() if rows is None else rows:
        counts[status] = counts.get(status, 0) + count
    return counts


def pending_approvals() -> int:
    """How many approval requests wait for a decision."""
    from hitl.models import ApprovalRequest, ApprovalStatus

    return ApprovalRequest.objects.filter(status=ApprovalStatus.PENDING).count()


def last_position() -> int:
    """The highest committed position: a read of the primary key's index, not a COUNT(*)."""
    from events.models import StoredEvent

    return StoredEvent.objects.aggregate(last=Max("position"))["last"] or 0


def database_figures() -> dict[str, Any]:
    """What /metrics reads from the database, in one worker-thread call."""
    from hitl.selectors import approval_counts, decisions_by_rule

    events_stored = last_position()
    rows = approval_counts()  # one query for both families
    return {
        "events_stored": events_stored,
        "approvals": approvals_by_status(rows),
        "decisions_by_rule": decisions_by_rule(rows),
    }


# The families


def _counter(name: str, help_text: str, value: float) -> Family:
    return Family(f"{PREFIX}_{name}", "counter", help_text).add(value)


def _gauge(name: str, help_text: str, value: float) -> Family:
    return Family(f"{PREFIX}_{name}", "gauge", help_text).add(value)


def bus_families(stats: dict[str, Any]) -> Iterator[Family]:
    """The bus statistics of this process."""
    yield _counter(
        "bus_events_published_total", "Events published on this process's bus.", stats["total_published"]
    )
    by_type: dict[str, int] = {}
    for event_type, count in stats["events_by_type"].items():
        # Agents may publish types of their own: only the known ones get a series of their own.
        label = event_type if event_type in _KNOWN_EVENT_TYPES else OTHER
        by_type[label] = by_type.get(label, 0) + count
    family = Family(
        f"{PREFIX}_bus_events_published_by_type_total",
        "counter",
        "Events published on this process's bus, by event type (types the project does not define: other).",
    )
    for event_type, count in sorted(by_type.items()):
        family.add(count, event_type=event_type)
    yield family
    yield (
        Family(
            f"{PREFIX}_bus_events_dropped_total",
            "counter",
            "Events the bus did not deliver: dropped by a middleware, refused by a full queue, or left on a "
            "stopped event loop.",
        )
        .add(stats["dropped_by_middleware"], reason="middleware")
        .add(stats["dropped_queue_full"], reason="queue_full")
        .add(stats["lost_on_stopped_loop"], reason="loop_stopped")
    )
    yield (
        Family(
            f"{PREFIX}_bus_handler_calls_total",
            "counter",
            "Handler calls by outcome: returned, raised, or abandoned after their timeout.",
        )
        .add(stats["successful_handlers"], outcome="success")
        .add(stats["failed_handlers"], outcome="failure")
        .add(stats["timed_out_handlers"], outcome="timeout")
    )
    yield _counter(
        "bus_middleware_errors_total", "Bus middleware calls that raised.", stats["middleware_errors"]
    )
    yield _gauge(
        "bus_queue_depth", "Fire-and-forget events waiting in the bus's queue.", stats["queue_depth"]
    )
    yield _gauge("bus_queue_capacity", "The bound of the bus's queue.", stats["queue_max_size"])
    yield _gauge(
        "bus_pending", "Events accepted and not yet handled (queued plus the one in hand).", stats["pending"]
    )
    yield _gauge("bus_subscriptions", "Handlers subscribed to the bus.", stats["subscriptions"])


def store_families(stats: dict[str, Any], events_stored: int) -> Iterator[Family]:
    """The store's writer in this process, and the events stored by every process."""
    yield _counter(
        "store_events_written_total", "Events this process's writer committed to the store.", stats["stored"]
    )
    yield _counter(
        "store_duplicates_total", "Events already stored (same event_id), skipped.", stats["duplicates"]
    )
    yield _counter("store_rejected_total", "Events the database refused (poison events).", stats["rejected"])
    yield _counter("store_batches_total", "Batches (transactions) the writer committed.", stats["batches"])
    yield _counter(
        "store_write_failures_total", "Batch commits that failed and were retried.", stats["write_failures"]
    )
    yield _gauge("store_buffered", "Events accepted by the writer and not yet committed.", stats["buffered"])
    yield _gauge(
        "store_last_batch_seconds", "How long the writer's last batch took.", stats["last_batch_ms"] / 1000
    )
    yield _gauge(
        "events_stored",
        "Events ever stored, by every process: the highest committed position (purged events included).",
        events_stored,
    )


def live_families(stats: dict[str, Any]) -> Iterator[Family]:
    """The live feed of this process (WebSocket connections on /ws/events/ and /ws/hitl/)."""
    yield _gauge(
        "live_connections", "WebSocket connections following this process's live feed.", stats["connections"]
    )
    yield _counter(
        "live_events_dispatched_total",
        "Stored events this process's live feed handed out.",
        stats["dispatched"],
    )
    yield _counter(
        "live_queue_overflows_total",
        "Connections that fell behind and were sent a gap (or, on /ws/hitl/, a fresh snapshot).",
        stats["overflows"],
    )


def distributed_families(stats: dict[str, Any]) -> Iterator[Family]:
    """The distributed bus's relay over Redis, when REDIS_URL makes the bus distributed."""
    relay = stats.get("distributed")
    if not relay or not relay.get("enabled"):
        return
    yield _gauge(
        "redis_connected",
        "1 while the bus's relay is subscribed and publishing to Redis.",
        int(relay["connected"]),
    )
    yield (
        Family(
            f"{PREFIX}_redis_events_total", "counter", "Events relayed over Redis, by direction and outcome."
        )
        .add(relay["sent"], direction="sent")
        .add(relay["received"], direction="received")
        .add(relay["duplicates"], direction="duplicate")
        .add(relay["dropped"], direction="dropped")
        .add(relay["invalid_messages"], direction="invalid")
    )
    yield _counter(
        "redis_publish_failures_total",
        "Batches the relay failed to send to Redis.",
        relay["publish_failures"],
    )
    yield _counter("redis_reconnects_total", "Times the relay reconnected to Redis.", relay["reconnects"])
    yield _gauge("redis_outbox", "Events waiting to be sent to Redis.", relay["outbox"])


def approval_family(counts: dict[str, int]) -> Family:
    """Approval requests by status."""
    family = Family(f"{PREFIX}_approval_requests", "gauge", "Approval requests by status.")
    for status, count in counts.items():
        family.add(count, status=status)
    return family


def decisions_by_rule_family(counts: dict[tuple[str, str], int]) -> Family:
    """Decided approval requests by the rule that decided or routed them, and their status."""
    family = Family(
        f"{PREFIX}_approval_decisions_total",
        "counter",
        "Decided approval requests by rule (name; standing; none) and status.",
    )
    for (rule, status), count in sorted(counts.items()):
        family.add(count, rule=rule, status=status)
    return family


def exposition(figures: dict[str, Any]) -> str:
    """The whole /metrics body, from the database figures and this process's counters."""
    stats = dict(event_bus.get_stats())
    families: list[Family] = [
        *bus_families(stats),
        *distributed_families(stats),
        *live_families(live_feed.get_stats()),
        *store_families(event_store.get_stats(), figures["events_stored"]),
        approval_family(figures["approvals"]),
        decisions_by_rule_family(figures.get("decisions_by_rule", {})),
        request_latencies.family(),
    ]
    return render(families)
