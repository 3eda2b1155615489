"""Webhooks: every matching stored event reaches each endpoint signed per Standard Webhooks, in position
order, at least once, queued from the store (the outbox) by each endpoint's worker; a failing endpoint is
retried, then disabled with its reason; attempts are kept; an admin sends again; URLs are checked."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from standardwebhooks import Webhook

from core.errors import ApplicationError
from events.base import BaseEvent
from events.event_bus import event_bus
from events.event_store import event_store
from events.models import StoredEvent
from events.services import events_record
from notify.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from notify.services import lease_claim, webhook_endpoint_disable, webhook_endpoint_save, webhook_enqueue

from .conftest import eventually

pytestmark = pytest.mark.django_db(transaction=True)


def endpoint_for(receiver, event_types=(), **extra) -> WebhookEndpoint:
    endpoint = webhook_endpoint_save(url=receiver.url, event_types=list(event_types), **extra)
    receiver.secret = endpoint.secret
    return endpoint


async def publish(count: int, event_type: str = "agent_switched", category: str = "agent") -> list[BaseEvent]:
    events = [
        BaseEvent(event_type, category, session_id="s-1", data={"n": n}, source="test") for n in range(count)
    ]
    for event in events:
        await event_bus.publish(event)
    await event_bus.drain()
    await event_store.flush()
    return events


async def test_a_stored_event_is_posted_signed_per_standard_webhooks_with_its_position(receiver, worker):
    endpoint = await sync_to_async(endpoint_for)(receiver)
    [event] = await publish(1)
    await eventually(lambda: receiver.accepted_positions())
    request = receiver.requests[0]
    assert request["verified"]
    # The library's own verification, again, on what arrived: webhook-id is the event's id.
    assert request["headers"]["webhook-id"] == event.event_id
    assert abs(int(request["headers"]["webhook-timestamp"]) - time.time()) < 60
    assert request["headers"]["webhook-signature"].startswith("v1,")
    stored = await sync_to_async(
        lambda: StoredEvent.objects.get(event_id=event.event_id).as_contract_dict()
    )()
    assert request["body"] == stored and request["body"]["position"] == event.position
    assert endpoint.secret.startswith("whsec_")
    Webhook(endpoint.secret)  # a secret the library accepts


async def test_only_endpoints_whose_types_or_categories_match_get_the_event(make_receiver, worker):
    by_type, by_category, everything, other = (make_receiver() for _ in range(4))
    await sync_to_async(endpoint_for)(by_type, ["agent_switched"])
    await sync_to_async(endpoint_for)(by_category, ["agent"])
    await sync_to_async(endpoint_for)(everything, [])
    await sync_to_async(endpoint_for)(other, ["session", "tool_execution_failed"])
    events = await publish(3)
    positions = [e.position for e in events]
    for receiver in (by_type, by_category, everything):
        await eventually(lambda receiver=receiver: receiver.accepted_positions() == positions)
    await asyncio.sleep(0.3)
    assert other.requests == []
    assert await sync_to_async(WebhookDelivery.objects.filter(endpoint__url=other.url).count)() == 0


def record(events: list[BaseEvent]) -> None:
    with transaction.atomic():
        events_record(events=events)


def test_the_store_is_the_outbox_committed_events_are_queued_in_order_and_rolled_back_ones_never(
    receiver, make_receiver, local_webhooks
):
    before = BaseEvent("agent_switched", "agent", session_id="s-1", source="test")
    record([before])  # stored before the endpoint existed: not its history to hear
    endpoint = endpoint_for(receiver)
    only_sessions = endpoint_for(make_receiver(), event_types=["session"])
    rolled_back = BaseEvent("agent_switched", "agent", session_id="s-1", source="test")
    with pytest.raises(RuntimeError), transaction.atomic():
        events_record(events=[rolled_back])
        raise RuntimeError("the caller's change failed")
    committed = [BaseEvent("agent_switched", "agent", session_id="s-1", source="test") for _ in range(250)]
    with transaction.atomic():
        events_record(events=committed)
    session = BaseEvent("session_created", "session", session_id="s-1", source="test")
    record([session])

    assert webhook_enqueue(endpoint_id=endpoint.pk, limit=200) == 200  # a page at a time
    assert webhook_enqueue(endpoint_id=endpoint.pk, limit=200) == 51
    assert webhook_enqueue(endpoint_id=endpoint.pk, limit=200) == 0  # each position once
    rows = list(WebhookDelivery.objects.filter(endpoint=endpoint).order_by("position"))
    assert [r.event_id for r in rows] == [e.event_id for e in committed] + [session.event_id]
    assert all(
        r.delivered_at is None and r.position == e.position for r, e in zip(rows[:-1], committed, strict=True)
    )
    assert not WebhookDelivery.objects.filter(event_id__in=[before.event_id, rolled_back.event_id]).exists()

    assert webhook_enqueue(endpoint_id=only_sessions.pk) == 1  # types or categories, in the query
    assert WebhookDelivery.objects.get(endpoint=only_sessions).event_id == session.event_id


def test_a_disabled_endpoint_is_paused_and_resumes_where_it_stopped(receiver, local_webhooks):
    endpoint = endpoint_for(receiver)
    webhook_endpoint_disable(endpoint_id=endpoint.pk, reason="test")
    while_disabled = BaseEvent("agent_switched", "agent", session_id="s-1", source="test")
    record([while_disabled])
    assert webhook_enqueue(endpoint_id=endpoint.pk) == 0
    endpoint.refresh_from_db()
    webhook_endpoint_save(endpoint=endpoint, url=endpoint.url, secret=endpoint.secret, enabled=True)
    after = BaseEvent("agent_switched", "agent", session_id="s-1", source="test")
    record([after])
    assert webhook_enqueue(endpoint_id=endpoint.pk) == 2
    queued = WebhookDelivery.objects.filter(endpoint=endpoint).order_by("position")
    assert [d.event_id for d in queued] == [while_disabled.event_id, after.event_id]


def test_a_dead_receivers_backlog_stays_in_the_store(receiver, local_webhooks):
    endpoint = endpoint_for(receiver)
    record([BaseEvent("agent_switched", "agent", session_id="s", source="t") for _ in range(30)])
    assert webhook_enqueue(endpoint_id=endpoint.pk, limit=10, backlog=20) == 10
    assert webhook_enqueue(endpoint_id=endpoint.pk, limit=10, backlog=20) == 10
    assert webhook_enqueue(endpoint_id=endpoint.pk, limit=10, backlog=20) == 0  # 20 wait: no more rows
    WebhookDelivery.objects.filter(endpoint=endpoint).update(delivered_at=timezone.now())
    assert webhook_enqueue(endpoint_id=endpoint.pk, limit=10, backlog=20) == 10


async def test_deliveries_arrive_in_position_order_at_least_once_across_a_receiver_that_fails_a_while(
    receiver, worker
):
    await sync_to_async(endpoint_for)(receiver)
    receiver.fail_until = time.monotonic() + 1.0
    events = await publish(30)
    more = await publish(20)  # a second commit while the receiver still fails
    positions = [e.position for e in events + more]
    await eventually(lambda: receiver.accepted_positions() == positions, timeout=15)
    assert any(not r["accepted"] for r in receiver.requests)  # it did fail for a while
    # Every refused request was the head of the queue: nothing after it was sent before it succeeded.
    sent = [r["body"]["position"] for r in receiver.requests]
    assert sent == sorted(sent)
    # Outcomes are written a page at a time, just after the receiver has the page.
    undelivered = sync_to_async(WebhookDelivery.objects.filter(delivered_at__isnull=True).count)
    await eventually(lambda: _none_left(undelivered), timeout=10)


async def _none_left(count: Any) -> bool:
    return await count() == 0


async def test_an_endpoint_failing_for_the_whole_retry_window_is_disabled_with_its_reason(
    receiver, worker, local_webhooks, admin_client
):
    local_webhooks.WEBHOOK_RETRY_HOURS = 0.8 / 3600  # the 24 hours, scaled down to 0.8 s
    receiver.always_fail = True
    endpoint = await sync_to_async(endpoint_for)(receiver, ["agent_switched"])
    [event] = await publish(1)

    def disabled():
        endpoint.refresh_from_db()
        return not endpoint.enabled

    await eventually(sync_to_async(disabled), timeout=10)
    assert "WEBHOOK_RETRY_HOURS" in endpoint.disabled_reason
    assert f"#{event.position}" in endpoint.disabled_reason and "HTTP 500" in endpoint.disabled_reason
    attempts = len(receiver.requests)
    assert attempts >= 2  # retried before giving up
    await asyncio.sleep(0.5)
    assert len(receiver.requests) == attempts  # and nothing after

    page = await sync_to_async(admin_client.get)(
        reverse("admin:notify_webhookendpoint_change", args=[endpoint.pk])
    )
    assert (
        "This endpoint is disabled" in page.content.decode()
        and "WEBHOOK_RETRY_HOURS" in page.content.decode()
    )


async def test_each_attempt_is_kept_with_status_latency_and_a_response_excerpt_of_at_most_1_kb(
    receiver, worker
):
    receiver.reply = b"x" * 5000
    receiver.fail_until = time.monotonic() + 0.3
    await sync_to_async(endpoint_for)(receiver)
    [event] = await publish(1)
    await eventually(lambda: receiver.accepted_positions())

    def attempts() -> list[WebhookAttempt] | None:
        found = list(WebhookAttempt.objects.filter(delivery__event_id=event.event_id).order_by("id"))
        return found if found and found[-1].succeeded else None

    rows = await eventually(sync_to_async(attempts))
    assert rows[0].status_code == 500 and not rows[0].succeeded
    assert rows[-1].status_code == 200
    assert all(len(r.response_excerpt.encode()) <= 1024 and r.latency_ms > 0 for r in rows)


async def test_send_again_from_the_admin_posts_a_delivered_event_once_more(receiver, worker, admin_client):
    await sync_to_async(endpoint_for)(receiver, ["agent_switched"])
    [event] = await publish(1)
    await eventually(lambda: len(receiver.accepted_positions()) == 1)
    delivery = await sync_to_async(WebhookDelivery.objects.get)(event_id=event.event_id)
    response = await sync_to_async(admin_client.post)(
        reverse("admin:notify_webhookdelivery_changelist"),
        {"action": "send_again", "_selected_action": [delivery.pk]},
    )
    assert response.status_code == 302
    await eventually(lambda: receiver.accepted_positions() == [event.position, event.position])
    assert receiver.requests[1]["headers"]["webhook-id"] == event.event_id  # the same id: receivers dedupe


async def test_a_slow_receiver_holds_neither_ingestion_nor_the_other_endpoints(make_receiver, worker):
    slow, fast = make_receiver(), make_receiver()
    slow.delay_s = 1.5
    await sync_to_async(endpoint_for)(slow)
    await sync_to_async(endpoint_for)(fast)
    started = time.monotonic()
    events = await publish(5)
    assert time.monotonic() - started < 1.0  # stored without waiting for any receiver
    await eventually(lambda: fast.accepted_positions() == [e.position for e in events], timeout=1.0)
    assert len(slow.accepted_positions()) <= 1


def test_http_and_loopback_urls_are_refused_naming_url(settings):
    settings.WEBHOOK_ALLOW_HTTP = False
    settings.WEBHOOK_ALLOW_LOOPBACK = False
    for url in (
        "http://example.com/hook",
        "https://127.0.0.1/hook",
        "https://localhost:8443/hook",
        "https://[::1]/hook",
        "https://0.0.0.0/hook",
        "ftp://example.com/",
    ):
        with pytest.raises(ApplicationError) as refused:
            webhook_endpoint_save(url=url)
        assert refused.value.status == 400 and refused.value.message.startswith("url:"), url
    assert webhook_endpoint_save(url="https://hooks.example.com/in").pk
    settings.WEBHOOK_ALLOW_HTTP = True
    settings.WEBHOOK_ALLOW_LOOPBACK = True
    assert webhook_endpoint_save(url="http://127.0.0.1:9/hook").pk


def test_the_admin_form_shows_a_refused_url_on_the_url_field(admin_client, settings):
    settings.WEBHOOK_ALLOW_LOOPBACK = False
    response = admin_client.post(
        reverse("admin:notify_webhookendpoint_add"),
        {"url": "https://127.0.0.1/hook", "event_types": "", "secret": Webhook_secret(), "enabled": "on"},
    )
    assert response.status_code == 200
    assert "loopback" in str(response.context["adminform"].form.errors["url"])
    assert not WebhookEndpoint.objects.exists()
    response = admin_client.post(
        reverse("admin:notify_webhookendpoint_add"),
        {
            "url": "https://hooks.example.com/in",
            "event_types": "hitl, tool_execution_failed",
            "secret": Webhook_secret(),
            "enabled": "on",
        },
    )
    assert response.status_code == 302
    assert WebhookEndpoint.objects.get().event_types == ["hitl", "tool_execution_failed"]


def Webhook_secret() -> str:  # noqa: N802 - reads as what it makes
    from notify.models import webhook_secret_generate

    return webhook_secret_generate()


def test_webhooks_in_the_admin_are_for_superusers_only(django_user_model):
    operator = django_user_model.objects.create_user("olga", password="pw", is_staff=True)
    from django.contrib.auth.models import Permission

    operator.user_permissions.add(*Permission.objects.filter(content_type__app_label="notify"))
    client = Client()
    client.force_login(operator)
    assert client.get(reverse("admin:notify_webhookendpoint_changelist")).status_code == 403
    assert client.get(reverse("admin:notify_webhookdelivery_changelist")).status_code == 403


def test_one_process_at_a_time_holds_an_endpoints_lease():
    assert lease_claim(name="webhook:1", owner="a", ttl_s=30)
    assert not lease_claim(name="webhook:1", owner="b", ttl_s=30)
    assert lease_claim(name="webhook:1", owner="a", ttl_s=0.01)  # renewed by its holder
    time.sleep(0.05)
    assert lease_claim(name="webhook:1", owner="b", ttl_s=30)  # expired: taken over
