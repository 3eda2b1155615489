"""Traces and timelines: the events of one correlation id as a causation tree, the steps of a session,
and the admin URLs that show them (used by the admin and by the pages)."""

from __future__ import annotations

import re
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache
from html import escape
from typing import Any

from django.urls import get_script_prefix, reverse
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.safestring import SafeString, mark_safe

from core.admin_kit import short

from .selectors import SUMMARY_KEYS

# A trace shows at most this many events; a timeline page this many.
TRACE_LIMIT = 2_000
TIMELINE_PAGE = 500
# Deeper levels of a trace are not indented further: their depth is shown as a number instead, so a
# chain of 20 (or 2,000) causes keeps the event column narrow (templates/.../trace.html caps the width).
MAX_INDENT = 6
INDENT_EM = 1.25

_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


_PLACEHOLDER = "0"


@lru_cache(maxsize=64)
def _reversed(name: str, script_prefix: str, with_id: bool) -> tuple[str, str]:
    # reverse() is a fair share of a changelist's time at three links a row: each URL is reversed once
    # (per script prefix) and the row's position put in its place.
    url = reverse(name, args=[_PLACEHOLDER] if with_id else [])
    if not with_id:
        return url, ""
    head, _, tail = url.rpartition(f"/{_PLACEHOLDER}/")
    return head + "/", "/" + tail


def _url_of(name: str, position: int | None = None) -> str:
    head, tail = _reversed(name, get_script_prefix(), position is not None)
    return head if position is None else f"{head}{int(position)}{tail}"


def trace_url(position: int) -> str:
    """The trace page of an event: every event with its correlation id."""
    return _url_of("admin:events_storedevent_event_trace", position)


def correlation_trace_url(correlation_id: str) -> str:
    """The trace page of a correlation id (an audit entry's event may have been purged)."""
    return _url_of("admin:events_storedevent_trace") + "?" + urlencode({"correlation_id": correlation_id})


def timeline_url(session_id: str) -> str:
    """The timeline page of a session."""
    return _url_of("admin:events_storedevent_timeline") + "?" + urlencode({"session_id": session_id})


def session_link(session_id: str | None, limit: int | None = None) -> SafeString | str:
    """An admin list's session cell: the id, shortened, linking to its timeline; a dash when none."""
    if not session_id:
        return "—"
    shown = short(session_id) if limit is None else short(session_id, limit)
    return format_html(
        '<a href="{}" title="the session\'s timeline: {}">{}</a>', timeline_url(session_id), session_id, shown
    )


def event_url(position: int) -> str:
    """The admin page of one stored event."""
    return _url_of("admin:events_storedevent_change", position)


def summary(row: dict[str, Any]) -> str:
    """The few keys of a step's `data` that say what it did, as one line."""
    parts = []
    for key in SUMMARY_KEYS:
        value = row.get(f"data_{key}")
        if value not in (None, ""):
            parts.append(f"{key}={short(str(value), 60)}")
    return " · ".join(parts)


def _normalise_id(value: str | None) -> str | None:
    if value is None or _CANONICAL_UUID.fullmatch(value):
        return value  # what the bus writes: str(uuid4())
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return value


@dataclass
class TraceStep:
    """One event of a trace, where it sits in the causation tree, and how long after what it came."""

    row: dict[str, Any]
    depth: int
    parent: dict[str, Any] | None
    since_parent: timedelta | None = None
    since_previous: timedelta | None = None
    since_start: timedelta | None = None
    children: int = 0
    cycle: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def position(self) -> int:
        return int(self.row["position"])

    @property
    def indent(self) -> float:
        return min(self.depth, MAX_INDENT) * INDENT_EM


def build_trace(rows: list[dict[str, Any]]) -> list[TraceStep]:
    """The events of one correlation id (in position order) as a causation tree, depth first.

    An event whose causation id names an event of the list is that event's child; every other is a
    root (its cause is outside the list, or it has none). Children follow their parent in position
    order. Durations: since the parent, since the previous event of the trace (position order), and
    since the trace's first event. A causation cycle (only bad data makes one) is cut where found.
    """
    by_id = {str(row["event_id"]): row for row in rows}  # a UUID: str() is the canonical form
    children: dict[str, list[dict[str, Any]]] = defaultdict(list)
    parent_of: dict[int, dict[str, Any]] = {}
    roots = []
    for row in rows:
        cause = _normalise_id(row["causation_id"])
        own = str(row["event_id"])
        if cause is not None and cause in by_id and cause != own:
            children[cause].append(row)
            parent_of[row["position"]] = by_id[cause]
        else:
            roots.append(row)

    previous: dict[int, dict[str, Any]] = {}
    for before, after in zip(rows, rows[1:], strict=False):
        previous[after["position"]] = before
    start = rows[0]["timestamp"] if rows else None

    steps: list[TraceStep] = []
    seen: set[int] = set()

    def walk(root: dict[str, Any], *, cycle: bool) -> None:
        # Iterative: a chain of TRACE_LIMIT events would pass Python's recursion limit.
        stack: list[tuple[dict[str, Any], int]] = [(root, 0)]
        while stack:
            row, depth = stack.pop()
            if row["position"] in seen:
                continue
            seen.add(row["position"])
            kids = children.get(str(row["event_id"]), [])
            parent = None if depth == 0 else parent_of.get(row["position"])
            before = previous.get(row["position"])
            steps.append(
                TraceStep(
                    row=row,
                    depth=depth,
                    parent=parent,
                    since_parent=None if parent is None else row["timestamp"] - parent["timestamp"],
                    since_previous=None if before is None else row["timestamp"] - before["timestamp"],
                    since_start=None if start is None else row["timestamp"] - start,
                    children=len(kids),
                    cycle=cycle and depth == 0,
                )
            )
            stack.extend((kid, depth + 1) for kid in reversed(kids))

    for root in roots:
        walk(root, cycle=False)
    for row in rows:  # what no root reaches is caught in a cycle
        if row["position"] not in seen:
            walk(row, cycle=True)
    return steps


_TRACE_ROW = (
    '<tr class="events-step{focus}" data-position="{position}" data-depth="{depth}">'
    '<td class="events-event" style="padding-left: {indent}em;">{branch}<a href="{url}">{event_type}</a>'
    "{notes}</td>"
    '<td><a href="{url}">#{position}</a></td>'
    '<td class="events-when">{when}</td>'
    '<td class="events-duration events-since-parent">{since_parent}</td>'
    '<td class="events-duration events-since-previous">{since_previous}</td>'
    '<td class="events-duration events-since-start">{since_start}</td>'
    '<td class="events-word">{source}</td><td class="events-word">{actor}</td><td>{session}</td>'
    '<td class="events-summary">{summary}</td></tr>'
)


def trace_rows_html(steps: list[TraceStep]) -> SafeString:
    """The trace's table rows, every value escaped.

    Built here rather than in the template: 2,000 rows of ten cells through the template engine (or
    format_html, which escapes through lazy wrappers) take most of a second; str.format with
    html.escape a few dozen milliseconds.
    """
    sessions: dict[str, str] = {}
    rows = []
    for step in steps:
        row, extra = step.row, step.extra
        notes = ""
        if step.cycle:
            notes += ' <span class="quiet">(causation cycle)</span>'
        if step.depth > MAX_INDENT:
            notes += f' <span class="events-depth" title="depth {step.depth}">{step.depth}</span>'
        session_id = row["session_id"]
        if not session_id:
            session = "—"
        elif session_id in sessions:
            session = sessions[session_id]
        else:
            link, label = escape(timeline_url(session_id)), escape(short(session_id, 24))
            session = sessions[session_id] = f'<a href="{link}" title="{escape(session_id)}">{label}</a>'
        rows.append(
            _TRACE_ROW.format(
                focus=" events-focus" if extra.get("focus") else "",
                position=int(step.position),
                depth=int(step.depth),
                indent=f"{step.indent:.1f}",
                branch='<span class="events-branch">└ </span>' if step.depth else "",
                url=escape(extra["url"]),
                event_type=escape(row["event_type"]),
                notes=notes,
                when=escape(extra["when"]),
                since_parent=escape(extra["since_parent"] or "—"),
                since_previous=escape(extra["since_previous"] or "—"),
                since_start=escape(extra["since_start"]),
                source=escape(row["source"]),
                actor=escape(row["actor"] or "—"),
                session=session,
                summary=escape(extra["summary"]),
            )
        )
    return mark_safe("\n".join(rows))  # every value above is escaped
