"""/hitl/requests/<call_id>/: the page e-mails and Slack link to. While the request waits it has the
queue's card and controls; once decided it shows the outcome; always its history of stored events."""

from __future__ import annotations

import json
import re

import pytest
from django.contrib.auth.models import Group

from accounts.services import roles_setup
from hitl.services import approval_decide, approval_request

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def operator(django_user_model):
    roles_setup()
    user = django_user_model.objects.create_user("olga", "olga@example.com", "pw")
    user.groups.add(Group.objects.get(name="operators"))
    return user


def ask(call_id: str) -> None:
    approval_request(
        call_id=call_id,
        session_id="s-1",
        tool_name="delete_records",
        arguments={"table": "t"},
        reason="tidy <up>",
    )


def test_a_waiting_request_has_its_card_with_controls_and_the_page_follows_only_it(client, operator):
    ask("call-1 é")
    client.force_login(operator)
    response = client.get("/hitl/requests/call-1%20%C3%A9/")
    assert response.status_code == 200
    page = response.content.decode()
    assert 'data-testid="approve"' in page and 'data-call-id="call-1 é"' in page
    assert "tidy &lt;up&gt;" in page
    config = json.loads(page.split('id="hitl-config" type="application/json">')[1].split("</script>")[0])
    assert config["only_call_id"] == "call-1 é" and len(config["pending"]) == 1
    assert 'data-event-type="tool_approval_required"' in page  # the history


def test_a_decided_request_shows_its_outcome_and_history(client, operator):
    ask("call-2")
    approval_decide(call_id="call-2", user=operator, decision="REJECT", comment="no way", channel="api")
    client.force_login(operator)
    page = client.get("/hitl/requests/call-2/").content.decode()
    assert 'data-testid="approve"' not in page.split("<template")[0]  # no live controls, only the template
    assert "olga (api)" in page and "no way" in page
    kinds = [part.split('"')[0] for part in page.split('data-event-type="')[1:]]
    assert kinds == ["tool_approval_required", "hitl_decision_made"]


def test_an_unknown_request_is_a_404_page_and_others_are_kept_out(client, operator, django_user_model):
    client.force_login(operator)
    missing = client.get("/hitl/requests/nope/")
    assert missing.status_code == 404 and b"No such request" in missing.content
    client.logout()
    assert client.get("/hitl/requests/nope/").status_code == 302  # sign in first
    stranger = django_user_model.objects.create_user("sam", "", "pw")
    client.force_login(stranger)
    assert client.get("/hitl/requests/nope/").status_code == 403


def test_an_expired_request_says_the_expiry_decided_and_moments_are_written_one_way(client, operator):
    from datetime import timedelta

    from django.utils import timezone

    from hitl.services import approval_expire

    ask("call-3")
    assert approval_expire(now=timezone.now() + timedelta(days=30)) == 1
    client.force_login(operator)
    page = client.get("/hitl/requests/call-3/").content.decode()
    decided_by = page.split('data-testid="request-decided-by">')[1].split("<")[0]
    assert decided_by == "expiry"
    decided_at = page.split('data-testid="request-decided-at"')[1].split(">")[1].split("<")[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", decided_at)
    assert "username" not in page
