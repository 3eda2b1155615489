"""Expiry warnings: HITL_WARN_BEFORE_S before a pending request's deadline, one `tool_approval_expiring`
event per request, stored with its warning row in one transaction; webhooks carry it; the page hears it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from events.models import StoredEvent
from hitl.consumers import LIFECYCLE_EVENTS, message_for
from hitl.services import approval_decide, approval_request
from notify.models import ExpiryWarning, WebhookDelivery
from notify.services import webhook_endpoint_save, webhook_enqueue
from notify.warnings import approval_warn_expiring

pytestmark = pytest.mark.django_db(transaction=True)


def ask(call_id: str, timeout_s: float) -> None:
    approval_request(
        call_id=call_id,
        session_id="s-1",
        tool_name="delete_records",
        arguments={"table": "t"},
        timeout_s=timeout_s,
    )


def warnings_of(call_id: str) -> list[StoredEvent]:
    return [
        e
        for e in StoredEvent.objects.filter(event_type="tool_approval_expiring")
        if e.data["call_id"] == call_id
    ]


def test_a_pending_request_is_warned_once_within_warn_before_of_its_deadline(settings):
    settings.HITL_WARN_BEFORE_S = 60
    ask("soon", 30)
    ask("later", 600)
    assert approval_warn_expiring() == 1
    assert approval_warn_expiring() == 0  # once per request
    [warning] = warnings_of("soon")
    assert warning.event_category == "hitl" and warning.source == "notify"
    assert warning.data["tool_name"] == "delete_records" and 0 < warning.data["seconds_left"] <= 30
    assert ExpiryWarning.objects.filter(call_id="soon").count() == 1
    assert warnings_of("later") == []
    # The later one is warned when its time comes.
    assert approval_warn_expiring(now=timezone.now() + timedelta(seconds=560)) == 1
    assert len(warnings_of("later")) == 1


def test_a_decided_request_gets_no_warning(settings, django_user_model):
    settings.HITL_WARN_BEFORE_S = 60
    from accounts.services import api_token_issue

    operator = api_token_issue(username="olga", group="operators").user
    ask("decided", 30)
    approval_decide(call_id="decided", user=operator, decision="APPROVE")
    assert approval_warn_expiring() == 0
    assert warnings_of("decided") == [] and not ExpiryWarning.objects.exists()


def test_zero_warn_before_turns_the_warnings_off(settings):
    settings.HITL_WARN_BEFORE_S = 0
    ask("soon", 30)
    assert approval_warn_expiring() == 0


def test_webhooks_carry_the_expiring_warning_from_its_own_transaction(settings):
    settings.HITL_WARN_BEFORE_S = 60
    settings.WEBHOOK_ALLOW_HTTP = settings.WEBHOOK_ALLOW_LOOPBACK = True
    endpoint = webhook_endpoint_save(url="http://127.0.0.1:9/hook", event_types=["tool_approval_expiring"])
    ask("soon", 30)
    approval_warn_expiring()
    [warning] = warnings_of("soon")
    webhook_enqueue(endpoint_id=endpoint.pk)
    delivery = WebhookDelivery.objects.get(endpoint=endpoint)
    assert delivery.position == warning.position and delivery.event_type == "tool_approval_expiring"


def test_the_approval_page_hears_an_expiring_request_as_an_expiring_message():
    assert "tool_approval_expiring" in LIFECYCLE_EVENTS
    message = message_for("tool_approval_expiring", {"call_id": "c", "status": "pending"})
    assert message == {"type": "expiring", "call_id": "c", "status": "pending"}
    # Once decided, the warning says nothing: the decision's own message does.
    decided = message_for("tool_approval_expiring", {"call_id": "c", "status": "approved"})
    assert decided is not None and decided["type"] == "decision"
