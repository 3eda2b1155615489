"""The live event feed page: the filters of the API, the newest events first, live over /ws/events/.

Without `after`, the first paint shows the newest INITIAL_ROWS matching events up to the store's last
position P at that moment, and the socket connects with `after=P`: nothing is lost or repeated between
the page and the socket. With `after`, the socket replays from there. events/static/events/feed.js
keeps the position it last saw and reconnects (or resumes after a `gap`) from it.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django import forms
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.views.decorators.http import require_safe

from .event_types import EventCategory, EventType
from .filters import MAX_ID_LENGTH, MAX_POSITION
from .models import row_to_contract_dict
from .perms import VIEW_EVENTS as VIEW_PERMISSION
from .selectors import last_stored_position, stored_event_rows
from .traces import timeline_url, trace_url

FILTERS = ("session_id", "correlation_id", "event_type", "event_category")
INITIAL_ROWS = 50
MAX_ROWS = 500  # rows kept in the page; older ones leave as new ones arrive
PREVIEW_CHARS = 160


class FeedFilterForm(forms.Form):
    """The filters of GET /api/events/ that a live feed can follow (`after` is where it starts)."""

    session_id = forms.CharField(required=False, max_length=MAX_ID_LENGTH, label="Session")
    correlation_id = forms.CharField(required=False, max_length=MAX_ID_LENGTH, label="Correlation")
    event_type = forms.CharField(
        required=False,
        max_length=100,
        label="Type",
        widget=forms.TextInput(attrs={"list": "event-types", "autocomplete": "off"}),
    )
    event_category = forms.ChoiceField(
        required=False,
        label="Category",
        choices=[("", "any"), *((category.value, category.value) for category in EventCategory)],
    )
    after = forms.IntegerField(
        required=False,
        min_value=0,
        max_value=MAX_POSITION,
        label="After position",
        help_text="Replay the stored events after this position first.",
        widget=forms.NumberInput(attrs={"inputmode": "numeric"}),
    )


def forbidden(request: HttpRequest, *, page: str, role: str) -> HttpResponse:
    """A 403 page (of the live pages) that says who is signed in and which role the page needs."""
    return TemplateResponse(request, "live/forbidden.html", {"page": page, "role": role}, status=403)


def data_preview(data: Any) -> str:
    """An event's data on one line, cut to PREVIEW_CHARS (the JS cuts the same way)."""
    text = json.dumps(data, ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


def clock(timestamp: str) -> str:
    """HH:MM:SS.mmm UTC of a contract timestamp (TIME_FORMAT with milliseconds; events/time.js too)."""
    moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    return moment.strftime("%H:%M:%S.%f")[:-3] + " UTC"


def row_context(event: dict[str, Any]) -> dict[str, Any]:
    """One row of the feed as the template shows it."""
    session_id = event.get("session_id")
    return {
        **event,
        "clock": clock(event["timestamp"]),
        "preview": data_preview(event["data"]),
        "data_pretty": json.dumps(event["data"], indent=2, ensure_ascii=False),
        "trace_url": trace_url(event["position"]),
        "timeline_url": timeline_url(session_id) if session_id else None,
    }


def _trace_pattern() -> tuple[str, str]:
    # The trace URL of position 0, split around the position, for the JS to put any position in.
    head, _, tail = trace_url(0).rpartition("/0/")
    return head + "/", "/" + tail


@login_required
@require_safe
def live_feed(request: HttpRequest) -> HttpResponse:
    """The feed page: the filter form, the newest matching events, and the socket's settings."""
    if not request.user.has_perm(VIEW_PERMISSION):
        return forbidden(request, page="The live event feed", role="auditor or operator")
    form = FeedFilterForm(request.GET or None)
    valid = not form.is_bound or form.is_valid()
    filters: dict[str, str] = {}
    after: int | None = None
    rows: list[dict[str, Any]] = []
    if valid and form.is_bound:
        filters = {name: form.cleaned_data[name] for name in FILTERS if form.cleaned_data.get(name)}
        after = form.cleaned_data.get("after")
    if valid and after is None:
        after = last_stored_position()
        newest = stored_event_rows().filter(position__lte=after, **filters).order_by("-position")
        rows = [row_context(row_to_contract_dict(row)) for row in newest[:INITIAL_ROWS]]
    trace_head, trace_tail = _trace_pattern()
    config = {
        "ws_path": "/ws/events/",
        "filters": filters,
        "after": after,
        "connect": valid,
        "max_rows": MAX_ROWS,
        "preview_chars": PREVIEW_CHARS,
        "links": {
            "trace_head": trace_head,
            "trace_tail": trace_tail,
            "timeline": reverse("admin:events_storedevent_timeline") + "?session_id=",
        },
    }
    context = {
        "form": form,
        "rows": rows,
        "config": config,
        "event_types": [event_type.value for event_type in EventType],
        "filtered": bool(filters),
        "max_rows": MAX_ROWS,
        "nav": "feed",
    }
    return TemplateResponse(request, "events/live.html", context)
