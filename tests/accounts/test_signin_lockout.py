"""The sign-in lock-out (CONTRACT.md, "The trust boundary"): 5 failures of one username within 15 minutes
lock it for 15 minutes, even with the right password; the audit trail records the lock-out once."""

from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from accounts.services import api_token_issue
from audit.models import AuditEntry
from events.event_bus import event_bus
from events.event_store import event_store
from events.models import StoredEvent

pytestmark = pytest.mark.django_db(transaction=True)

LOGIN = "/admin/login/"
PASSWORD = "correct horse battery"


def settle() -> None:
    event_bus.drain_sync(timeout=10)
    event_store.flush_sync(timeout=10)


@pytest.fixture
def olga():
    return get_user_model().objects.create_user(
        username="olga", password=PASSWORD, is_staff=True, is_superuser=True
    )


def sign_in(client: Client, username: str, password: str, ip: str = "10.0.0.1"):
    return client.post(LOGIN, {"username": username, "password": password, "next": "/admin/"}, REMOTE_ADDR=ip)


def signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def system_entries() -> list[str]:
    return list(
        AuditEntry.objects.filter(event_category="system").order_by("id").values_list("event_type", flat=True)
    )


def test_the_settings_of_the_contract():
    assert settings.AXES_FAILURE_LIMIT == 5
    assert settings.AXES_COOLOFF_TIME == timedelta(minutes=15)
    assert settings.AXES_LOCKOUT_PARAMETERS == ["username"]
    assert settings.AUTHENTICATION_BACKENDS[0] == "accounts.sign_in.SignInLockoutBackend"


def test_five_failures_lock_the_username_even_for_the_right_password(client, olga):
    for _ in range(4):
        response = sign_in(client, "olga", "wrong")
        assert response.status_code == 200  # the sign-in form again, with its error
        assert not signed_in(client)
    locking = sign_in(client, "olga", "wrong")
    assert locking.status_code == 429
    refused = sign_in(client, "olga", PASSWORD)
    assert refused.status_code == 429
    assert not signed_in(client)
    page = refused.content.decode()
    assert 'id="locked-out"' in page and "olga" in page and "15 minutes" in page
    assert "Retry-After" in refused.headers and 0 < int(refused.headers["Retry-After"]) <= 15 * 60


def test_the_lock_out_is_per_username_not_per_address(client, olga):
    get_user_model().objects.create_user(username="petra", password=PASSWORD, is_staff=True)
    for _ in range(5):
        sign_in(client, "olga", "wrong", ip="10.0.0.1")
    # The same username from elsewhere is refused; another username from the same address is not.
    assert sign_in(Client(), "olga", PASSWORD, ip="10.9.9.9").status_code == 429
    other = Client()
    assert sign_in(other, "petra", PASSWORD, ip="10.0.0.1").status_code == 302
    assert signed_in(other)


def test_failures_spread_over_more_than_the_window_do_not_lock(client, olga):
    for _ in range(4):
        sign_in(client, "olga", "wrong")
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=16))
    assert sign_in(client, "olga", "wrong").status_code == 200
    assert sign_in(client, "olga", PASSWORD).status_code == 302
    assert signed_in(client)


def test_the_lock_out_ends_after_the_cool_off_and_refused_tries_do_not_extend_it(client, olga):
    for _ in range(5):
        sign_in(client, "olga", "wrong")
    for _ in range(3):
        assert sign_in(client, "olga", PASSWORD).status_code == 429
    # Refused tries are not counted: the lock still ends 15 minutes after the fifth failure.
    assert list(AccessAttempt.objects.values_list("failures_since_start", flat=True)) == [5]
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=15, seconds=1))
    assert sign_in(client, "olga", PASSWORD).status_code == 302
    assert signed_in(client)


def test_the_audit_trail_records_the_lock_out_once_not_every_refused_try(client, olga):
    for _ in range(5):
        sign_in(client, "olga", "wrong")
    for attempt in range(300):
        sign_in(client, "olga", PASSWORD if attempt % 2 else "wrong", ip=f"10.0.{attempt % 250}.1")
    settle()
    assert system_entries() == ["operator_sign_in_failed"] * 5 + ["operator_locked_out"]
    assert StoredEvent.objects.filter(event_type="operator_sign_in_failed").count() == 5
    locked = StoredEvent.objects.get(event_type="operator_locked_out")
    assert locked.event_category == "system"
    assert locked.data == {"username": "olga", "ip": "10.0.0.1", "failures": 5, "locked_for_s": 900}
    assert "wrong" not in str(locked.data)


def test_a_second_lock_out_after_the_first_ended_is_recorded_again(client, olga):
    for _ in range(5):
        sign_in(client, "olga", "wrong")
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=16))
    for _ in range(6):
        sign_in(client, "olga", "wrong")
    settle()
    assert system_entries().count("operator_locked_out") == 2


def test_an_unknown_username_is_locked_out_too(client):
    for _ in range(5):
        sign_in(client, "nobody", "wrong")
    assert sign_in(client, "nobody", "wrong").status_code == 429
    settle()
    assert system_entries().count("operator_locked_out") == 1


def test_sign_ins_without_a_request_are_not_counted_or_refused(olga):
    """authenticate() without a request is the server's own code (management commands, the test client's
    login()): there is nothing for axes to count, and it must not raise."""
    client = Client()
    for _ in range(6):
        assert not client.login(username="olga", password="wrong")
    assert client.login(username="olga", password=PASSWORD)
    assert not AccessAttempt.objects.exists()


def test_agents_cannot_publish_a_lock_out():
    token = api_token_issue(username="agent-1", group="agents").token
    response = Client().post(
        "/api/events/",
        {"event_type": "operator_locked_out", "event_category": "system", "data": {"username": "olga"}},
        content_type="application/json",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 403
    assert response.json()["code"] == "reserved_event_type"
