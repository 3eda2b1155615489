"""Slack: a message with Approve, Edit and Reject per request that waits for a person, posted after the
commit to a local fake of Slack's Web API (SLACK_API_URL) and kept up to date whoever decides; the
interactions endpoint reads only requests signed as Slack signs them and decides as the Django user with
the Slack user's e-mail address, with the page's permissions; nothing else decides anything."""

from __future__ import annotations

import json
import logging
import time
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from accounts.services import roles_setup
from hitl.conf import register_tool_schema, unregister_tool_schema
from hitl.models import ApprovalRequest
from hitl.policies import rule_create
from hitl.services import approval_decide, approval_escalate, approval_expire, approval_request
from notify.models import SlackMessage
from notify.notifiers import notifier_steps
from notify.slack import (
    APPROVE,
    ARGUMENTS_BLOCK,
    COMMENT_BLOCK,
    EDIT,
    EDIT_MODAL,
    REJECT,
    REJECT_MODAL,
    slack_pause,
    slack_step,
    slack_users,
)
from notify.warnings import approval_warn_expiring

from .slack_fake import FakeSlack, click, signed, submit

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
URL = "/integrations/slack/interactions/"


@pytest.fixture
def slack(settings):
    fake = FakeSlack()
    fake.users = {
        "U_ALICE": {"email": "Alice@Example.com"},
        "U_BOB": {"email": "bob@example.com"},
        "U_CAROL": {"email": "carol@example.com"},
        "U_GHOST": {"email": "ghost@example.com"},
        "U_NOMAIL": {},
    }
    settings.SLACK_BOT_TOKEN = "xoxb-test"
    settings.SLACK_SIGNING_SECRET = SECRET
    settings.SLACK_CHANNEL = "#approvals"
    settings.SLACK_API_URL = fake.url
    settings.NOTIFY_BASE_URL = "https://approvals.example.com"
    slack_users.clear()
    slack_pause.succeeded()
    yield fake
    fake.close()
    slack_users.clear()
    slack_pause.succeeded()


@pytest.fixture
def people(django_user_model, slack):
    roles_setup()  # the groups with their permissions, as `manage.py setup_roles` makes them

    def person(name: str, *groups: str):
        user = django_user_model.objects.create_user(name, f"{name}@example.com", "pw")
        for group in groups:
            user.groups.add(Group.objects.get_or_create(name=group)[0])
        return user

    made = {
        "alice": person("alice", "operators"),
        "bob": person("bob", "operators"),
        "carol": person("carol"),  # signed up, but no operator
        "agent": person("agent-1", "agents"),
    }
    slack_step()  # the notifier starts at the store's end, as a server does
    return made


def ask(call_id: str = "call-1", tool_name: str = "delete_records", **extra) -> ApprovalRequest:
    request, _ = approval_request(
        call_id=call_id,
        session_id="s-1",
        tool_name=tool_name,
        arguments={"table": "customers", "where": "id < 10"},
        agent="billing-bot",
        reason="clean up <test> rows & more",
        **extra,
    )
    return request


def post(client, payload, **kwargs):
    return client.post(URL, **signed(SECRET, payload, **kwargs))


def status_of(call_id: str = "call-1") -> str:
    return ApprovalRequest.objects.get(call_id=call_id).status


def texts(blocks) -> str:
    return json.dumps(blocks)


# Posting and updating


def test_a_pending_request_is_posted_after_the_commit_with_approve_edit_and_reject(people, slack):
    ask()
    assert slack.called("chat.postMessage") == []  # nothing before the notifier reads the store
    slack_step()
    [posted] = slack.called("chat.postMessage")
    assert posted["channel"] == "#approvals"
    blocks = posted["blocks"]
    actions = [b for b in blocks if b["type"] == "actions"][0]["elements"]
    assert [(a["action_id"], a["value"]) for a in actions] == [
        (APPROVE, "call-1"),
        (EDIT, "call-1"),
        (REJECT, "call-1"),
    ]
    shown = texts(blocks)
    assert "delete_records" in shown and "billing-bot" in shown and "customers" in shown
    assert "&lt;test&gt; rows &amp; more" in shown  # Slack's escapes: no injected mention or link
    assert "https://approvals.example.com/hitl/requests/call-1/" in shown
    assert "<@U_ALICE>" in shown and "<@U_BOB>" in shown  # the deciders, found by their e-mail
    assert "U_CAROL" not in shown
    message = SlackMessage.objects.get(call_id="call-1")
    assert (message.channel, message.ts) == ("C0APPROVALS", "1700000000.000001")
    slack_step()
    assert len(slack.called("chat.postMessage")) == 1  # once


def test_a_request_a_rule_decides_at_once_is_not_posted(people, slack):
    rule_create(data={"name": "reads", "tool": "read_*", "action": "approve"}, user=people["alice"])
    ask(tool_name="read_file")
    slack_step()
    assert slack.called("chat.postMessage") == []


def test_the_message_shows_the_outcome_whichever_channel_decided(people, slack):
    ask()
    slack_step()
    approval_decide(
        call_id="call-1", user=people["bob"], decision="REJECT", comment="not today", channel="page"
    )
    slack_step()
    [update] = slack.called("chat.update")
    assert (update["channel"], update["ts"]) == ("C0APPROVALS", "1700000000.000001")
    shown = texts(update["blocks"])
    assert "Rejected" in shown and "bob (page)" in shown and "not today" in shown
    assert all(b["type"] != "actions" for b in update["blocks"])  # no buttons once decided


def test_expiry_and_cancellation_update_the_message(people, slack):
    ask("call-exp", timeout_s=30)
    ask("call-can")
    slack_step()
    approval_expire(now=timezone.now() + timedelta(seconds=31), call_id="call-exp")
    from hitl.services import approval_cancel

    approval_cancel(call_id="call-can", user=people["alice"])
    slack_step()
    shown = {u["ts"]: texts(u["blocks"]) for u in slack.called("chat.update")}
    assert "Expired" in shown["1700000000.000001"]
    assert "Withdrawn" in shown["1700000000.000002"]


def test_a_warning_before_the_deadline_and_an_escalation_reply_in_the_thread(people, slack, settings):
    settings.HITL_WARN_BEFORE_S = 60
    Group.objects.get_or_create(name="seniors")
    people["bob"].groups.add(Group.objects.get(name="seniors"))
    rule_create(
        data={
            "name": "deletes",
            "tool": "delete_*",
            "action": "require",
            "escalate_after_s": 5,
            "escalate_to_group": "seniors",
        },
        user=people["alice"],
    )
    ask(timeout_s=45)
    slack_step()
    approval_warn_expiring()
    approval_escalate(now=timezone.now() + timedelta(seconds=6))
    slack_step()
    replies = [c for c in slack.called("chat.postMessage") if c.get("thread_ts")]
    assert [r["thread_ts"] for r in replies] == ["1700000000.000001"] * 2
    assert "expires" in replies[0]["text"]
    assert "Escalated to seniors" in replies[1]["text"] and "<@U_BOB>" in replies[1]["text"]
    assert "Escalated to" in texts(slack.called("chat.update")[-1]["blocks"])


def test_slack_away_repeats_the_event_later_and_posts_it_once(people, slack):
    slack.down = True
    ask()
    assert slack_step() == 0
    assert not SlackMessage.objects.exists()
    slack.down = False
    assert slack_step() == 0  # paused a moment after the failure
    slack_pause.succeeded()
    slack_step()
    assert len(slack.called("chat.postMessage")) == 1
    assert SlackMessage.objects.filter(call_id="call-1").exists()


def test_a_call_slack_refuses_is_logged_and_passed_over(people, slack, settings, caplog):
    settings.SLACK_CHANNEL = "#missing"
    ask("call-1")
    with caplog.at_level(logging.ERROR, logger="notify"):
        slack_step()
    assert "channel_not_found" in caplog.text
    settings.SLACK_CHANNEL = "#approvals"
    ask("call-2")
    slack_step()
    assert SlackMessage.objects.filter(call_id="call-2").exists()


def test_the_server_runs_each_notifier_only_when_configured(settings, slack):
    settings.NOTIFY_EMAIL = True
    assert [name for name, _ in notifier_steps()] == ["email", "slack"]
    settings.SLACK_BOT_TOKEN = ""
    assert [name for name, _ in notifier_steps()] == ["email"]
    settings.NOTIFY_EMAIL = False  # no mail server named: localhost:25 is not tried for every request
    assert notifier_steps() == []


# Deciding from Slack


def test_approve_decides_as_the_django_user_with_the_slack_users_email(client, people, slack):
    ask()
    slack_step()
    response = post(client, click(APPROVE, "call-1"))
    assert response.status_code == 200
    request = ApprovalRequest.objects.get(call_id="call-1")
    assert (request.status, request.decided_by_username, request.channel) == ("approved", "alice", "slack")
    slack_step()
    shown = texts(slack.called("chat.update")[-1]["blocks"])
    assert "Approved" in shown and "alice (slack)" in shown


def test_edit_opens_a_modal_with_the_arguments_and_its_json_is_checked_against_the_schema(
    client, people, slack
):
    register_tool_schema(
        "delete_records",
        {
            "type": "object",
            "properties": {"table": {"type": "string"}, "where": {"type": "string"}},
            "required": ["table"],
            "additionalProperties": False,
        },
    )
    ask()
    assert post(client, click(EDIT, "call-1")).status_code == 200
    [opened] = slack.called("views.open")
    assert opened["trigger_id"] == "1337.42.abcdef"
    assert opened["view"]["callback_id"] == EDIT_MODAL and opened["view"]["private_metadata"] == "call-1"
    assert '"table": "customers"' in opened["view"]["blocks"][1]["element"]["initial_value"]

    bad_json = post(client, submit(EDIT_MODAL, "call-1", **{ARGUMENTS_BLOCK: '{"table": '}))
    assert bad_json.status_code == 200 and bad_json.json()["response_action"] == "errors"
    assert ARGUMENTS_BLOCK in bad_json.json()["errors"]
    off_schema = post(client, submit(EDIT_MODAL, "call-1", **{ARGUMENTS_BLOCK: '{"rows": 5}'}))
    assert "modified_args" in off_schema.json()["errors"][ARGUMENTS_BLOCK]
    assert status_of() == "pending"

    good = post(
        client,
        submit(
            EDIT_MODAL,
            "call-1",
            **{ARGUMENTS_BLOCK: '{"table": "customers_test"}', COMMENT_BLOCK: "test table"},
        ),
    )
    assert good.status_code == 200 and good.content == b""
    request = ApprovalRequest.objects.get(call_id="call-1")
    assert (request.status, request.modified_args, request.comment) == (
        "edited",
        {"table": "customers_test"},
        "test table",
    )
    assert request.channel == "slack"
    unregister_tool_schema("delete_records")


def test_reject_opens_a_modal_and_its_comment_reaches_the_agent(client, people, slack):
    ask()
    post(client, click(REJECT, "call-1", user="U_BOB"))
    assert slack.called("views.open")[0]["view"]["callback_id"] == REJECT_MODAL
    assert status_of() == "pending"  # the click alone decides nothing
    response = post(client, submit(REJECT_MODAL, "call-1", user="U_BOB", **{COMMENT_BLOCK: "wrong table"}))
    assert response.status_code == 200
    request = ApprovalRequest.objects.get(call_id="call-1")
    assert (request.status, request.decided_by_username, request.comment) == (
        "rejected",
        "bob",
        "wrong table",
    )


def test_a_decided_request_is_refused_to_the_clicker_alone(client, people, slack):
    ask()
    approval_decide(call_id="call-1", user=people["bob"], decision="APPROVE", channel="api")
    assert post(client, click(REJECT, "call-1")).status_code == 200
    assert slack.called("views.open") == []
    [told] = slack.called("chat.postEphemeral")
    assert told["user"] == "U_ALICE" and "already approved" in told["text"]
    assert status_of() == "approved"


# Refused: nothing decided


@pytest.mark.parametrize(
    "how",
    ["forged", "stale", "missing", "junk timestamp"],
)
def test_a_request_not_signed_by_slack_within_5_minutes_is_refused(client, people, slack, how, caplog):
    ask()
    kwargs = signed(SECRET, click(APPROVE, "call-1"))
    if how == "forged":
        kwargs = signed("another-secret", click(APPROVE, "call-1"))
    elif how == "stale":
        kwargs = signed(SECRET, click(APPROVE, "call-1"), timestamp=int(time.time()) - 301)
    elif how == "missing":
        kwargs["headers"] = {}
    else:
        kwargs["headers"]["X-Slack-Request-Timestamp"] = "soon"
    with caplog.at_level(logging.WARNING, logger="notify"):
        response = client.post(URL, **kwargs)
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_signature"
    assert "signature" in caplog.text
    assert status_of() == "pending"


def test_a_body_changed_after_signing_is_refused(client, people, slack):
    ask()
    kwargs = signed(SECRET, click(REJECT, "call-1"))
    kwargs["data"] = kwargs["data"].replace(b"hitl_reject", b"hitl_approve")
    assert client.post(URL, **kwargs).status_code == 401
    assert status_of() == "pending"


@pytest.mark.parametrize(
    "payload",
    [
        click("hitl_delete_everything", "call-1"),
        {"type": "block_actions", "user": {"id": "U_ALICE"}, "actions": []},
        {"type": "view_submission", "user": {"id": "U_ALICE"}, "view": {"callback_id": "other"}},
        {"type": "shortcut", "user": {"id": "U_ALICE"}},
    ],
    ids=["unknown action id", "no action", "unknown modal", "unknown type"],
)
def test_an_unknown_action_is_refused_and_logged(client, people, slack, payload, caplog):
    ask()
    with caplog.at_level(logging.WARNING, logger="notify"):
        response = post(client, payload)
    assert response.status_code == 400
    assert response.json()["code"] == "unknown_action"
    assert "refused" in caplog.text
    assert status_of() == "pending"


@pytest.mark.parametrize(
    ("slack_user", "said"),
    [
        ("U_GHOST", "no active account"),
        ("U_NOMAIL", "no e-mail address"),
        ("U_UNKNOWN", "no e-mail address"),
        ("U_CAROL", "only operators"),
    ],
    ids=["no account", "no e-mail", "not in Slack", "no permission"],
)
def test_a_slack_user_without_an_account_or_permission_decides_nothing(
    client, people, slack, slack_user, said, caplog
):
    ask()
    with caplog.at_level(logging.WARNING, logger="notify"):
        response = post(client, click(APPROVE, "call-1", user=slack_user))
        edit = post(client, submit(EDIT_MODAL, "call-1", user=slack_user, **{ARGUMENTS_BLOCK: "{}"}))
    assert response.status_code == 200
    told = slack.called("chat.postEphemeral")
    assert told and told[0]["user"] == slack_user and said in told[0]["text"]
    assert said in edit.json()["errors"][ARGUMENTS_BLOCK]
    assert "refused" in caplog.text
    assert status_of() == "pending"


def test_the_requesting_user_never_approves_its_own_request_from_slack(client, people, slack):
    people["agent"].email = "agent@example.com"
    people["agent"].save()
    people["agent"].groups.add(Group.objects.get(name="operators"))
    slack.users["U_AGENT"] = {"email": "agent@example.com"}
    approval_request(
        call_id="call-1", session_id="s", tool_name="t", arguments={}, requested_by=people["agent"]
    )
    post(client, click(APPROVE, "call-1", user="U_AGENT"))
    assert "never approves" in slack.called("chat.postEphemeral")[0]["text"]
    assert status_of() == "pending"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"payload=not-json",
        b"payload=%5B1%5D",
        b"payload=" + b"%5B" * 5000 + b"%5D" * 5000,
        b"payload=%7B%22type%22%3A%22block_actions%22%2C%22user%22%3A%22U%00%22%7D",
        b"payload=%ff%fe",
        b"payload=1&payload=2",
        b"payload=%7B%22type%22%3A%22block_actions%22%2C%22user%22%3A7%2C%22actions%22%3A%5B%7B%22action_id%22%3A%22hitl_approve%22%2C%22value%22%3A%22call-1%22%7D%5D%7D",
    ],
    ids=["empty", "not json", "not an object", "too deep", "NUL", "not UTF-8", "twice", "user not an object"],
)
def test_a_malformed_signed_body_is_a_400_not_a_500(client, people, slack, raw):
    ask()
    response = client.post(URL, **signed(SECRET, None, raw=raw))
    assert response.status_code == 400
    assert response.json()["code"]
    assert status_of() == "pending"


def test_the_endpoint_is_a_404_when_slack_is_not_configured_and_405_for_get(client, settings, slack):
    assert client.get(URL).status_code == 405
    settings.SLACK_SIGNING_SECRET = ""
    response = client.post(URL, **signed(SECRET, click(APPROVE, "call-1")))
    assert response.status_code == 404
    assert "SLACK_SIGNING_SECRET" in response.json()["detail"]


# Preferences on the page


def test_an_operator_sets_their_own_preferences_on_the_page_and_slack_honours_them(client, people, slack):
    client.force_login(people["alice"])
    page = client.get("/hitl/notifications/")
    assert page.status_code == 200 and b'name="slack" checked' in page.content
    saved = client.post("/hitl/notifications/", {"email": "on", "tools": "read_*\nwrite_file"})
    assert saved.status_code == 302
    preference = people["alice"].notification_preference
    assert (preference.email, preference.slack, preference.tools) == (True, False, ["read_*", "write_file"])
    ask()
    slack_step()
    shown = texts(slack.called("chat.postMessage")[0]["blocks"])
    assert "<@U_BOB>" in shown and "<@U_ALICE>" not in shown


def test_bad_preferences_are_a_400_that_keeps_what_was_typed(client, people):
    client.force_login(people["alice"])
    response = client.post(
        "/hitl/notifications/", data=b"tools=%00x", content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 400
    assert b"NUL" in response.content or b"tools" in response.content


def test_preferences_need_the_operator_role(client, people):
    client.force_login(people["carol"])
    assert client.get("/hitl/notifications/").status_code == 403
    client.logout()
    assert client.get("/hitl/notifications/").status_code == 302
