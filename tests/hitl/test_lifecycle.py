"""The approval lifecycle through the services and the REST API: ask, wait, decide, expire, cancel."""

import asyncio
import threading
import time

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection
from django.test import AsyncClient, Client
from django.utils import timezone

from accounts.services import api_token_issue
from audit.models import AuditEntry
from core.errors import ApplicationError
from events.event_bus import event_bus
from events.event_store import event_store
from events.models import StoredEvent
from hitl.conf import register_tool_schema, unregister_tool_schema
from hitl.models import ApprovalRequest
from hitl.services import approval_cancel, approval_decide, approval_expire, approval_request, await_decision

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def people():
    """An agent and two operators with tokens, and a user with no role."""
    agent = api_token_issue(username="agent-1", group="agents")
    other_agent = api_token_issue(username="agent-2", group="agents")
    operator = api_token_issue(username="olga", group="operators")
    second = api_token_issue(username="oleg", group="operators")
    nobody = api_token_issue(username="nobody")
    return {
        "agent": agent,
        "other_agent": other_agent,
        "operator": operator,
        "second": second,
        "nobody": nobody,
    }


def ask(call_id="call-1", tool_name="write_file", arguments=None, **extra):
    return approval_request(
        call_id=call_id,
        session_id=extra.pop("session_id", "session-1"),
        tool_name=tool_name,
        arguments={"path": "a.py", "content": "x"} if arguments is None else arguments,
        reason=extra.pop("reason", "writes a file"),
        **extra,
    )


def auth(issued) -> dict[str, str]:
    return {"Authorization": f"Bearer {issued.token}"}


def settle() -> None:
    event_bus.drain_sync(timeout=10)
    event_store.flush_sync(timeout=10)


# Services


def test_request_is_idempotent_on_call_id_and_refuses_a_different_call(people):
    first, created = ask(requested_by=people["agent"].user)
    again, created_again = ask(requested_by=people["agent"].user)
    assert created and not created_again and again.pk == first.pk
    assert first.status == "pending" and first.expires_at > timezone.now()
    with pytest.raises(ApplicationError) as conflict:
        ask(arguments={"path": "other.py"})
    assert conflict.value.status == 409 and conflict.value.code == "call_id_conflict"
    settle()
    stored = StoredEvent.objects.filter(event_type="tool_approval_required")
    assert stored.count() == 1 and stored.get().data["call_id"] == "call-1"
    assert stored.get().actor == "agent-1"


def test_approve_edit_reject_and_the_arguments_to_run(people):
    operator = people["operator"].user
    ask("c-approve")
    ask("c-edit")
    ask("c-reject")
    approved = approval_decide(call_id="c-approve", user=operator, decision="APPROVE")
    edited = approval_decide(
        call_id="c-edit", user=operator, decision="EDIT", modified_args={"path": "safe.py", "content": "x"}
    )
    rejected = approval_decide(call_id="c-reject", user=operator, decision="REJECT", comment="not today")
    assert (approved.status, approved.decided_by_username, approved.channel) == ("approved", "olga", "api")
    assert edited.status == "edited" and edited.modified_args == {"path": "safe.py", "content": "x"}
    assert edited.arguments == {"path": "a.py", "content": "x"}  # the proposal is kept apart
    assert rejected.status == "rejected" and rejected.comment == "not today"
    settle()
    decisions = StoredEvent.objects.filter(event_type="hitl_decision_made").order_by("position")
    assert [(e.data["decision"], e.data["decided_by"], e.actor) for e in decisions] == [
        ("APPROVE", "olga", "olga"),
        ("EDIT", "olga", "olga"),
        ("REJECT", "olga", "olga"),
    ]
    audited = AuditEntry.objects.filter(event_type="hitl_decision_made")
    assert set(audited.values_list("actor", flat=True)) == {"olga"}


@pytest.mark.parametrize(
    "decision, modified_args, field",
    [
        ("EDIT", None, "modified_args"),
        ("EDIT", ["not", "an", "object"], "modified_args"),
        ("APPROVE", {"path": "x"}, "modified_args"),
        ("MAYBE", None, "decision"),
    ],
)
def test_bad_decisions_are_refused_naming_the_field(people, decision, modified_args, field):
    ask()
    with pytest.raises(ApplicationError) as error:
        approval_decide(
            call_id="call-1", user=people["operator"].user, decision=decision, modified_args=modified_args
        )
    assert error.value.status == 400 and error.value.extra["errors"][0]["field"] == field
    assert ApprovalRequest.objects.get().status == "pending"


def test_an_edit_is_checked_against_the_tools_schema(people):
    register_tool_schema(
        "write_file",
        {
            "type": "object",
            "properties": {"path": {"type": "string", "pattern": "^[^/]"}, "content": {"type": "string"}},
            "required": ["path", "content"],
            "additionalProperties": False,
        },
    )
    try:
        ask()
        with pytest.raises(ApplicationError) as error:
            approval_decide(
                call_id="call-1",
                user=people["operator"].user,
                decision="EDIT",
                modified_args={"path": "/etc/passwd", "content": "x"},
            )
        assert error.value.status == 400
        assert error.value.extra["errors"][0]["field"] == "modified_args.path"
        edited = approval_decide(
            call_id="call-1",
            user=people["operator"].user,
            decision="EDIT",
            modified_args={"path": "b.py", "content": ""},
        )
        assert edited.status == "edited"
    finally:
        unregister_tool_schema("write_file")


def test_only_operators_decide(people):
    ask()
    for who in ("agent", "nobody"):
        with pytest.raises(ApplicationError) as error:
            approval_decide(call_id="call-1", user=people[who].user, decision="APPROVE")
        assert error.value.status == 403
    superuser = get_user_model().objects.create_superuser("root", password="x")
    assert approval_decide(call_id="call-1", user=superuser, decision="APPROVE").status == "approved"


def test_a_second_decision_conflicts_and_an_expired_request_cannot_be_approved(people):
    ask()
    approval_decide(call_id="call-1", user=people["operator"].user, decision="REJECT")
    with pytest.raises(ApplicationError) as second:
        approval_decide(call_id="call-1", user=people["second"].user, decision="APPROVE")
    assert second.value.status == 409 and second.value.code == "already_decided"

    ask("call-2", timeout_s=0.05)
    time.sleep(0.1)
    with pytest.raises(ApplicationError) as late:
        approval_decide(call_id="call-2", user=people["operator"].user, decision="APPROVE")
    assert late.value.status == 409 and late.value.code == "expired"
    assert ApprovalRequest.objects.get(call_id="call-2").status == "pending"  # until the sweeper runs
    assert approval_expire() == 1
    expired = ApprovalRequest.objects.get(call_id="call-2")
    assert (expired.status, expired.channel, expired.decided_by_username) == ("expired", "expiry", "")
    with pytest.raises(ApplicationError):
        approval_decide(call_id="call-2", user=people["operator"].user, decision="APPROVE")


def test_expiry_follows_on_expire(people, settings):
    settings.HITL_MIN_AUTO_APPROVE_S = 0.001
    ask("reject-me", timeout_s=0.01)
    ask("approve-me", timeout_s=0.01, on_expire="approve")
    time.sleep(0.05)
    call_command("expire_approvals")
    settle()
    decisions = {
        e.data["call_id"]: (e.data["decision"], e.data["expired"])
        for e in StoredEvent.objects.filter(event_type="hitl_decision_made")
    }
    assert decisions == {"reject-me": ("REJECT", True), "approve-me": ("APPROVE", True)}


def test_cancel_by_the_agent_that_asked(people):
    ask(requested_by=people["agent"].user)
    with pytest.raises(ApplicationError) as stranger:
        approval_cancel(call_id="call-1", user=people["other_agent"].user)
    assert stranger.value.status == 403
    assert approval_cancel(call_id="call-1", user=people["agent"].user).status == "cancelled"
    with pytest.raises(ApplicationError) as again:
        approval_cancel(call_id="call-1", user=people["agent"].user)
    assert again.value.status == 409


def test_twenty_simultaneous_decisions_give_exactly_one_success(people):
    """Real connections in threads; on PostgreSQL they race for the same row."""
    ask()
    operators = [people["operator"].user, people["second"].user]
    outcomes: list[str] = []
    barrier = threading.Barrier(20)

    def decide(index: int) -> None:
        barrier.wait()
        try:
            approval_decide(
                call_id="call-1",
                user=operators[index % 2],
                decision=["APPROVE", "REJECT", "EDIT"][index % 3],
                modified_args={"path": f"{index}.py", "content": ""} if index % 3 == 2 else None,
            )
            outcomes.append("won")
        except ApplicationError as error:
            outcomes.append(error.code)
        finally:
            connection.close()

    threads = [threading.Thread(target=decide, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("won") == 1 and outcomes.count("already_decided") == 19
    settle()
    assert StoredEvent.objects.filter(event_type="hitl_decision_made").count() == 1


# Waiting


async def test_await_decision_wakes_when_the_service_decides(people):
    await database_sync_to_async(ask)()
    waiter = asyncio.ensure_future(await_decision("call-1", timeout=10))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    started = time.monotonic()
    await database_sync_to_async(approval_decide)(
        call_id="call-1", user=people["operator"].user, decision="EDIT", modified_args={"path": "b.py"}
    )
    decision = await asyncio.wait_for(waiter, 5)
    assert time.monotonic() - started < 1.0
    assert (decision.status, decision.decision, decision.arguments, decision.decided_by) == (
        "edited",
        "EDIT",
        {"path": "b.py"},
        "olga",
    )


async def test_await_decision_wakes_when_the_api_decides(people):
    await database_sync_to_async(ask)()
    waiter = asyncio.ensure_future(await_decision("call-1", timeout=10))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    response = await AsyncClient().post(
        "/api/hitl/requests/call-1/decision/",
        {"decision": "REJECT", "comment": "no"},
        content_type="application/json",
        headers=auth(people["operator"]),
    )
    assert response.status_code == 200
    decision = await asyncio.wait_for(waiter, 5)
    assert time.monotonic() - started < 1.0 and decision.decision == "REJECT" and decision.comment == "no"


async def test_a_waiter_that_arrives_after_the_decision_gets_it_at_once(people):
    await database_sync_to_async(ask)()
    await database_sync_to_async(approval_decide)(
        call_id="call-1", user=people["operator"].user, decision="APPROVE"
    )
    decision = await asyncio.wait_for(await_decision("call-1", timeout=30), 2)
    assert decision.approved and decision.arguments == {"path": "a.py", "content": "x"}


async def test_a_waiter_expires_its_request_at_the_deadline(people):
    await database_sync_to_async(ask)(timeout_s=0.3)
    started = time.monotonic()
    decision = await asyncio.wait_for(await_decision("call-1", timeout=10), 5)
    assert decision.status == "expired" and not decision.approved
    assert time.monotonic() - started < 2.0


async def test_await_decision_times_out_with_none(people):
    await database_sync_to_async(ask)()
    assert await await_decision("call-1", timeout=0.1) is None


# REST API


def test_api_create_is_idempotent_and_validates(people):
    client = Client()
    body = {
        "session_id": "s-1",
        "call_id": "api-1",
        "tool_name": "execute_command",
        "arguments": {"command": "ls"},
        "reason": "look around",
        "agent": "coder",
        "timeout_s": 60,
    }
    first = client.post(
        "/api/hitl/requests/", body, content_type="application/json", headers=auth(people["agent"])
    )
    assert first.status_code == 201
    payload = first.json()
    assert set(payload) == {
        "call_id",
        "session_id",
        "correlation_id",
        "agent",
        "tool_name",
        "arguments",
        "modified_args",
        "status",
        "reason",
        "comment",
        "decided_by",
        "channel",
        "created_at",
        "decided_at",
        "expires_at",
        "on_expire",
        "approvals_required",
        "approvals",
        "rule",
        "args_sha256",
        "approver_group",
        "escalate_to_group",
        "escalated_at",
        "risk",
    }
    assert (
        payload["status"] == "pending"
        and payload["on_expire"] == "reject"
        and payload["modified_args"] is None
    )
    again = client.post(
        "/api/hitl/requests/", body, content_type="application/json", headers=auth(people["agent"])
    )
    assert again.status_code == 200 and again.json()["call_id"] == "api-1"
    conflict = client.post(
        "/api/hitl/requests/",
        {**body, "arguments": {"command": "rm -rf /"}},
        content_type="application/json",
        headers=auth(people["agent"]),
    )
    assert conflict.status_code == 409 and conflict.json()["code"] == "call_id_conflict"
    for bad, field in [
        ({**body, "call_id": "x", "arguments": "ls"}, "arguments"),
        ({**body, "call_id": "y", "timeout_s": -1}, "timeout_s"),
        ({**body, "call_id": "a/b"}, "call_id"),
        ({k: v for k, v in body.items() if k != "tool_name"}, "tool_name"),
    ]:
        response = client.post(
            "/api/hitl/requests/", bad, content_type="application/json", headers=auth(people["agent"])
        )
        assert response.status_code == 400, bad
        assert response.json()["errors"][0]["field"] == field
    refused = client.post(
        "/api/hitl/requests/", body, content_type="application/json", headers=auth(people["operator"])
    )
    assert refused.status_code == 403
    assert client.post("/api/hitl/requests/", body, content_type="application/json").status_code == 401
    broken = client.post(
        "/api/hitl/requests/", "{not json", content_type="application/json", headers=auth(people["agent"])
    )
    assert broken.status_code == 400


def test_api_decision_statuses_and_the_approver_comes_from_authentication(people):
    ask(requested_by=people["agent"].user)
    client = Client()
    url = "/api/hitl/requests/call-1/decision/"
    assert client.post(url, {"decision": "APPROVE"}, content_type="application/json").status_code == 401
    for who in ("agent", "nobody"):
        response = client.post(
            url, {"decision": "APPROVE"}, content_type="application/json", headers=auth(people[who])
        )
        assert response.status_code == 403, who
    missing = client.post(
        "/api/hitl/requests/nope/decision/",
        {"decision": "APPROVE"},
        content_type="application/json",
        headers=auth(people["operator"]),
    )
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    bad = client.post(
        url, {"decision": "EDIT"}, content_type="application/json", headers=auth(people["operator"])
    )
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "modified_args"
    decided = client.post(
        url,
        {"decision": "APPROVE", "decided_by": "admin", "user": "admin", "comment": "ok"},
        content_type="application/json",
        headers=auth(people["operator"]),
    )
    assert decided.status_code == 200 and decided.json()["decided_by"] == "olga"
    assert ApprovalRequest.objects.get().decided_by_username == "olga"
    second = client.post(
        url, {"decision": "REJECT"}, content_type="application/json", headers=auth(people["second"])
    )
    assert second.status_code == 409 and second.json()["code"] == "already_decided"


def test_api_list_detail_and_visibility(people):
    ask("mine-1", requested_by=people["agent"].user)
    ask("mine-2", tool_name="execute_command", requested_by=people["agent"].user)
    ask("theirs", requested_by=people["other_agent"].user)
    approval_decide(call_id="mine-2", user=people["operator"].user, decision="APPROVE")
    client = Client()
    everything = client.get("/api/hitl/requests/", headers=auth(people["operator"])).json()
    assert {r["call_id"] for r in everything["results"]} == {"mine-1", "mine-2", "theirs"}
    pending = client.get("/api/hitl/requests/?status=pending", headers=auth(people["operator"])).json()
    assert {r["call_id"] for r in pending["results"]} == {"mine-1", "theirs"}
    own = client.get("/api/hitl/requests/", headers=auth(people["agent"])).json()
    assert {r["call_id"] for r in own["results"]} == {"mine-1", "mine-2"}
    assert client.get("/api/hitl/requests/theirs/", headers=auth(people["agent"])).status_code == 404
    assert (
        client.get("/api/hitl/requests/mine-1/", headers=auth(people["agent"])).json()["status"] == "pending"
    )
    page = client.get("/api/hitl/requests/?limit=2", headers=auth(people["operator"])).json()
    assert len(page["results"]) == 2 and page["next"]
    rest = client.get(page["next"], headers=auth(people["operator"])).json()
    assert len(rest["results"]) == 1 and rest["next"] is None
    assert client.get("/api/hitl/requests/?limit=0", headers=auth(people["operator"])).status_code == 400
    assert client.get("/api/hitl/requests/mine-1/?wait=61", headers=auth(people["agent"])).status_code == 400
    assert (
        client.get("/api/hitl/requests/mine-1/?wait=soon", headers=auth(people["agent"])).status_code == 400
    )
    assert client.get("/api/hitl/requests/", headers=auth(people["nobody"])).status_code == 403


async def test_api_long_poll_returns_when_decided(people):
    await database_sync_to_async(ask)(requested_by=people["agent"].user)

    async def decide_soon() -> None:
        await asyncio.sleep(0.2)
        await database_sync_to_async(approval_decide)(
            call_id="call-1", user=people["operator"].user, decision="APPROVE"
        )

    decider = asyncio.ensure_future(decide_soon())
    started = time.monotonic()
    response = await AsyncClient().get("/api/hitl/requests/call-1/?wait=30", headers=auth(people["agent"]))
    await decider
    assert response.status_code == 200 and response.json()["status"] == "approved"
    assert time.monotonic() - started < 5
    # Still pending after a short wait: the request as it is.
    await database_sync_to_async(ask)("call-2", requested_by=people["agent"].user)
    waited = await AsyncClient().get("/api/hitl/requests/call-2/?wait=0.2", headers=auth(people["agent"]))
    assert waited.json()["status"] == "pending"


def test_api_cancel(people):
    ask(requested_by=people["agent"].user)
    client = Client()
    assert client.post(
        "/api/hitl/requests/call-1/cancel/", headers=auth(people["other_agent"])
    ).status_code in (403, 404)
    response = client.post("/api/hitl/requests/call-1/cancel/", headers=auth(people["agent"]))
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert client.post("/api/hitl/requests/call-1/cancel/", headers=auth(people["agent"])).status_code == 409


def test_the_expire_command_is_quiet_when_nothing_is_due(capsys):
    call_command("expire_approvals")
    assert "Expired 0 approval requests." in capsys.readouterr().out


def test_create_operator_makes_a_staff_account_that_may_decide(capsys):
    from django.contrib.auth import authenticate

    call_command("create_operator", "vera")
    password = capsys.readouterr().out.split("password: ")[1].split()[0]
    user = authenticate(username="vera", password=password)
    assert user is not None and user.is_staff and user.has_perm("hitl.decide_approvalrequest")
    call_command("create_operator", "vera", "--group", "auditors")
    assert "password unchanged" in capsys.readouterr().out
    assert authenticate(username="vera", password=password) is not None


async def test_await_decision_wakes_when_the_admin_decides(people):
    from django.urls import reverse

    def operator_approves_in_the_admin() -> int:
        operator = people["operator"].user
        operator.is_staff = True  # the admin lets in staff only
        operator.save(update_fields=["is_staff"])
        client = Client()
        client.force_login(operator)
        request = ApprovalRequest.objects.get(call_id="call-1")
        url = reverse("admin:hitl_approvalrequest_change", args=[request.pk])
        return client.post(url, {"_decision": "approve", "comment": "looks fine"}).status_code

    await database_sync_to_async(ask)()
    waiter = asyncio.ensure_future(await_decision("call-1", timeout=10))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    status = await database_sync_to_async(operator_approves_in_the_admin)()
    decision = await asyncio.wait_for(waiter, 5)
    assert status in (200, 302)
    assert time.monotonic() - started < 1.0
    assert (decision.decision, decision.channel, decision.decided_by) == ("APPROVE", "admin", "olga")


def test_on_expire_approve_needs_a_deadline_someone_can_meet(people):
    with pytest.raises(ApplicationError) as refused:
        ask("too-soon", timeout_s=0.001, on_expire="approve")
    assert refused.value.status == 400 and "timeout_s" in refused.value.message
    assert not ApprovalRequest.objects.filter(call_id="too-soon").exists()
