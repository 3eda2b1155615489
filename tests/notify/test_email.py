"""E-mail: each person who may decide a new or escalated request gets a message linking to it, sent
by the notifier after the commit through Django's SMTP backend (here a local aiosmtpd server); digests
gather a period's requests into one message per person; preferences choose channels and tools."""

from __future__ import annotations

import socket
from datetime import timedelta
from email import message_from_bytes

import pytest
from aiosmtpd.controller import Controller
from django.contrib.auth.models import Group
from django.utils import timezone

from hitl.models import ApprovalRequest
from hitl.services import approval_escalate, approval_request
from notify.notifiers import email_digest_send, email_pause, email_step
from notify.services import preference_save

pytestmark = pytest.mark.django_db(transaction=True)


class Inbox:
    def __init__(self) -> None:
        self.messages: list = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
        message = message_from_bytes(envelope.content)
        self.messages.append(
            (envelope.rcpt_tos, message["Subject"], message.get_payload(decode=True).decode())
        )
        return "250 OK"

    def to(self, address: str) -> list:
        return [m for m in self.messages if address in m[0]]


@pytest.fixture
def inbox(settings):
    handler = Inbox()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = port
    settings.NOTIFY_BASE_URL = "https://approvals.example.com"
    settings.NOTIFY_EMAIL_DIGEST_S = 0
    email_pause.succeeded()
    yield handler
    controller.stop()
    email_pause.succeeded()


@pytest.fixture
def people(django_user_model):
    def person(name: str, group: str, email: bool = True):
        user = django_user_model.objects.create_user(name, f"{name}@example.com" if email else "", "pw")
        user.groups.add(Group.objects.get_or_create(name=group)[0])
        return user

    made = {
        "alice": person("alice", "operators"),
        "bob": person("bob", "operators"),
        "nomail": person("nomail", "operators", email=False),
        "fin": person("fin", "finance"),
        "sen": person("sen", "seniors"),
    }
    email_step()  # the notifier starts at the store's end, as a server does
    return made


def ask(call_id: str = "call-1", tool_name: str = "delete_records", **extra) -> None:
    approval_request(
        call_id=call_id, session_id="s-1", tool_name=tool_name, arguments={"table": "t"}, **extra
    )


def test_each_operator_with_an_address_gets_a_link_to_a_new_request_after_the_commit(inbox, people):
    ask()
    assert inbox.messages == []  # nothing from inside the request's transaction
    email_step()
    assert sorted(m[0][0] for m in inbox.messages) == ["alice@example.com", "bob@example.com"]
    _, subject, body = inbox.messages[0]
    assert "delete_records" in subject
    assert "https://approvals.example.com/hitl/requests/call-1/" in body
    email_step()
    assert len(inbox.messages) == 2  # once


def test_a_request_with_an_approver_group_goes_to_that_group_only(inbox, people):
    ask()
    ApprovalRequest.objects.filter(call_id="call-1").update(approver_group="finance")
    email_step()
    assert [m[0] for m in inbox.messages] == [["fin@example.com"]]


def test_an_escalation_goes_to_the_group_it_is_escalated_to(inbox, people):
    ask()
    email_step()
    inbox.messages.clear()
    ApprovalRequest.objects.filter(call_id="call-1").update(
        escalate_to_group="seniors", escalate_at=timezone.now() - timedelta(seconds=1)
    )
    assert approval_escalate() == 1
    email_step()
    [(to, subject, body)] = inbox.messages
    assert to == ["sen@example.com"] and "Escalated" in subject and "/hitl/requests/call-1/" in body


def test_a_digest_sends_one_message_per_person_per_period(inbox, people, settings):
    settings.NOTIFY_EMAIL_DIGEST_S = 60
    ask("call-1")
    ask("call-2", tool_name="send_email")
    email_step()
    assert inbox.messages == []
    assert email_digest_send() == 2
    assert sorted(m[0][0] for m in inbox.messages) == ["alice@example.com", "bob@example.com"]
    body = inbox.to("alice@example.com")[0][2]
    assert "/hitl/requests/call-1/" in body and "/hitl/requests/call-2/" in body
    assert email_digest_send() == 0  # nothing new this period


def test_preferences_choose_the_channel_and_the_tools(inbox, people):
    preference_save(user_id=people["alice"].pk, email=False)
    preference_save(user_id=people["bob"].pk, tools=["read_*"])
    ask("call-1", tool_name="delete_records")
    ask("call-2", tool_name="read_file")
    email_step()
    assert [(m[0], "read_file" in m[1]) for m in inbox.messages] == [(["bob@example.com"], True)]


def test_a_mail_server_away_holds_the_message_until_it_is_back(inbox, people, settings):
    port = settings.EMAIL_PORT
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        settings.EMAIL_PORT = probe.getsockname()[1]  # nothing listens there
    ask()
    assert email_step() == 0  # tried, and stopped at that event
    assert inbox.messages == []
    settings.EMAIL_PORT = port
    assert email_step() == 0  # paused a moment after the failure
    email_pause.succeeded()
    email_step()
    assert len(inbox.to("alice@example.com")) == 1  # sent once, not lost
