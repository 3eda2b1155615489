"""Approval policies (CONTRACT.md, "Approval policies"): rules, quorum, escalation, standing approvals,
the dry run, and every automatic decision in one transaction with its event and audit entry."""

import logging
import threading
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.db import close_old_connections
from django.db.models import Q
from django.test import Client
from django.utils import timezone

from accounts.services import api_token_issue
from audit.models import AuditEntry
from core.errors import ApplicationError
from events.models import StoredEvent
from hitl.models import ApprovalRequest, ApprovalRule, StandingApproval
from hitl.policies import args_sha256, rule_create, rule_set_enabled, rule_update, standing_revoke
from hitl.services import approval_decide, approval_escalate, approval_request

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def people():
    issued = {
        "agent": api_token_issue(username="agent-a", group="agents"),
        "other_agent": api_token_issue(username="agent-b", group="agents"),
        "alice": api_token_issue(username="alice", group="operators"),
        "bob": api_token_issue(username="bob", group="operators"),
        "carol": api_token_issue(username="carol", group="operators"),
    }
    finance = Group.objects.create(name="finance")
    seniors = Group.objects.create(name="seniors")
    issued["alice"].user.groups.add(finance)
    issued["bob"].user.groups.add(finance)
    issued["carol"].user.groups.add(seniors)
    return issued


def auth(issued) -> dict[str, str]:
    return {"Authorization": f"Bearer {issued.token}"}


def rule(people, **fields):
    return rule_create(data={"action": "require", **fields}, user=people["alice"].user)


def ask(people, call_id="call-1", *, tool="delete_records", arguments=None, agent="", session="s-1", **extra):
    request, _ = approval_request(
        call_id=call_id,
        session_id=session,
        tool_name=tool,
        arguments={"table": "users"} if arguments is None else arguments,
        agent=agent,
        requested_by=people[extra.pop("by", "agent")].user,
        **extra,
    )
    return request


def post_rule(people, body, who="alice"):
    return Client().post("/api/hitl/rules/", body, content_type="application/json", headers=auth(people[who]))


def error_field(response) -> str:
    return response.json()["errors"][0]["field"]


# Rules decide


def test_first_matching_rule_by_priority_decides(people):
    rule(people, name="reject-deletes", tool="delete_*", action="reject", priority=10, message="never")
    rule(people, name="approve-all", tool="*", action="approve", priority=5)
    rejected = ask(people, "c-1")
    approved = ask(people, "c-2", tool="read_file")
    assert (rejected.status, rejected.rule, rejected.channel, rejected.decided_by) == (
        "rejected",
        "reject-deletes@1",
        "policy",
        None,
    )
    assert rejected.comment == "never"
    assert (approved.status, approved.rule) == ("approved", "approve-all@1")


def test_equal_priority_goes_by_id_and_disabled_rules_are_skipped(people):
    first = rule(people, name="first", action="reject")
    rule(people, name="second", action="approve")
    assert ask(people, "c-1").rule == "first@1"
    rule_set_enabled(rule_id=first.pk, enabled=False, user=people["alice"].user)
    assert ask(people, "c-2").rule == "second@1"


def test_agent_glob_and_cel_condition(people):
    rule(
        people,
        name="tmp-writes",
        tool="write_file",
        agent="coder-*",
        condition='arguments.path.startsWith("/tmp/") && size(reason) < 100',
        action="approve",
    )
    ok = ask(people, "c-1", tool="write_file", arguments={"path": "/tmp/x"}, agent="coder-1")
    other_path = ask(people, "c-2", tool="write_file", arguments={"path": "/etc/x"}, agent="coder-1")
    other_agent = ask(people, "c-3", tool="write_file", arguments={"path": "/tmp/x"}, agent="writer")
    assert ok.status == "approved"
    assert other_path.status == other_agent.status == "pending"
    assert other_path.rule is None or other_path.rule == ""


def test_no_rule_means_one_approval_by_any_operator(people):
    request = ask(people)
    assert (request.status, request.rule, request.approvals_required, request.approver_group) == (
        "pending",
        "",
        1,
        None,
    )
    decided = approval_decide(call_id="call-1", user=people["carol"].user, decision="APPROVE")
    assert decided.status == "approved"
    assert decided.approvals == [{"user": "carol", "decided_at": decided.approvals[0]["decided_at"]}]


def test_cel_evaluation_error_does_not_match_and_is_logged(people, caplog):
    rule(people, name="needs-path", condition='arguments.path == "/tmp"', action="approve")
    with caplog.at_level(logging.WARNING, logger="hitl.policies"):
        request = ask(people, arguments={"table": "users"})  # no `path`: the condition fails
    assert request.status == "pending"
    assert any("needs-path@1" in r.getMessage() and "not matching" in r.getMessage() for r in caplog.records)


def test_a_new_version_applies_to_the_next_request(people):
    created = rule(people, name="r", action="approve")
    assert ask(people, "c-1").rule == "r@1"
    rule_update(rule_id=created.pk, data={"name": "r", "action": "reject"}, user=people["alice"].user)
    second = ask(people, "c-2")
    assert (second.status, second.rule) == ("rejected", "r@2")


# One transaction


def test_policy_decisions_have_their_event_and_audit_entry(people):
    rule(people, name="approve-reads", tool="read_*", action="approve", priority=2)
    rule(people, name="reject-deletes", tool="delete_*", action="reject", priority=1)
    for i in range(3):
        ask(people, f"r-{i}", tool="read_file")
        ask(people, f"d-{i}", tool="delete_records")
    decided = set(ApprovalRequest.objects.exclude(status="pending").values_list("call_id", flat=True))
    entries = [a.data["call_id"] for a in AuditEntry.objects.filter(event_type="hitl_decision_made")]
    events = [e.data["call_id"] for e in StoredEvent.objects.filter(event_type="hitl_decision_made")]
    assert sorted(entries) == sorted(events) == sorted(decided)
    assert len(decided) == 6
    entry = AuditEntry.objects.filter(event_type="hitl_decision_made").first()
    assert entry.data["channel"] == "policy" and entry.data["decided_by"] is None and entry.data["rule"]


def test_a_failed_decision_event_rolls_the_policy_decision_back(people, monkeypatch):
    rule(people, name="approve-all", action="approve")

    def broken(*, events):
        raise RuntimeError("store down")

    monkeypatch.setattr("hitl.services.events_record", broken)
    with pytest.raises(RuntimeError):
        ask(people)
    assert not ApprovalRequest.objects.exists()


# Rule changes: audited, versioned, validated


def test_every_rule_change_is_audited_with_its_version(people):
    client = Client()
    created = post_rule(people, {"name": "r", "tool": "x_*", "action": "approve"})
    assert created.status_code == 201 and created.json()["version"] == 1
    rule_id = created.json()["id"]
    url = f"/api/hitl/rules/{rule_id}/"
    headers = auth(people["alice"])
    updated = client.put(
        url, {"name": "r", "action": "reject"}, content_type="application/json", headers=headers
    )
    assert updated.status_code == 200 and updated.json()["version"] == 2
    rule_set_enabled(rule_id=rule_id, enabled=False, user=people["alice"].user)
    assert client.get(url, headers=headers).json()["version"] == 3
    assert client.delete(url, headers=headers).status_code == 204
    assert client.get(url, headers=headers).status_code == 404
    changes = [
        (a.data["change"], a.data["version"], a.actor)
        for a in AuditEntry.objects.filter(event_type="hitl_rule_changed").order_by("id")
    ]
    assert changes == [
        ("created", 1, "alice"),
        ("updated", 2, "alice"),
        ("disabled", 3, "alice"),
        ("deleted", 4, "alice"),
    ]


def test_rules_api_needs_the_permission(people):
    assert Client().get("/api/hitl/rules/", headers=auth(people["agent"])).status_code == 403
    assert post_rule(people, {"name": "r", "action": "approve"}, who="agent").status_code == 403
    assert not ApprovalRule.objects.exists()
    listed = Client().get("/api/hitl/rules/", headers=auth(people["alice"]))
    assert listed.status_code == 200 and listed.json() == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "r", "action": "maybe"}, "action"),
        ({"name": "r", "action": "require", "approvals_required": -1}, "approvals_required"),
        ({"name": "r", "action": "require", "approvals_required": 0}, "approvals_required"),
        ({"name": "r", "action": "require", "approver_group": "nobody"}, "approver_group"),
        ({"name": "r", "action": "require", "tool": ""}, "tool"),
        ({"name": "r", "action": "require", "tool": "a\u0000b"}, "tool"),
        ({"name": "r", "action": "require", "agent": "x" * 256}, "agent"),
        ({"name": "r", "action": "require", "tool": 5}, "tool"),
        ({"name": "r", "action": "require", "condition": "tool_name == "}, "condition"),
        ({"name": "r", "action": "require", "condition": "secret == 1"}, "condition"),
        (
            {"name": "r", "action": "require", "escalate_after_s": 60, "escalate_to_group": "nobody"},
            "escalate_to_group",
        ),
        ({"name": "r", "action": "require", "escalate_after_s": -5}, "escalate_after_s"),
        ({"name": "r", "action": "require", "surprise": 1}, "surprise"),
        ({"action": "require"}, "name"),
    ],
)
def test_bad_rules_are_400_naming_the_field(people, body, field):
    response = post_rule(people, body)
    assert response.status_code == 400, response.json()
    assert error_field(response) == field
    assert not ApprovalRule.objects.exists()
    assert not StoredEvent.objects.filter(event_type="hitl_rule_changed").exists()


def test_cel_syntax_error_names_condition_and_position(people):
    response = post_rule(people, {"name": "r", "action": "approve", "condition": "tool_name ==\n  &&& 1"})
    assert response.status_code == 400
    error = response.json()["errors"][0]
    assert error["field"] == "condition" and error["line"] == 2 and "line 2" in error["message"]


def test_duplicate_name_is_409(people):
    assert post_rule(people, {"name": "r", "action": "approve"}).status_code == 201
    again = post_rule(people, {"name": "r", "action": "reject"})
    assert again.status_code == 409 and error_field(again) == "name"


# Dry run


def test_dry_run_answers_and_creates_nothing(people):
    rule(people, name="finance", tool="pay_*", approvals_required=2, approver_group="finance")

    def counts():
        # The approval lifecycle's and the policy's records (other events, such as a model change a
        # fixture made, may still be reaching the store from the bus).
        lifecycle = Q(event_type__startswith="hitl_") | Q(event_type__startswith="tool_approval_")
        return (
            ApprovalRequest.objects.count(),
            StoredEvent.objects.filter(lifecycle).count(),
            AuditEntry.objects.filter(lifecycle).count(),
        )

    before = counts()
    response = Client().post(
        "/api/hitl/rules/evaluate/",
        {"call_id": "x", "session_id": "s", "tool_name": "pay_invoice", "arguments": {"amount": 5}},
        content_type="application/json",
        headers=auth(people["alice"]),
    )
    assert response.status_code == 200
    assert response.json() == {
        "action": "require",
        "rule": "finance@1",
        "approvals_required": 2,
        "approver_group": "finance",
    }
    other = Client().post(
        "/api/hitl/rules/evaluate/",
        {"tool_name": "read"},
        content_type="application/json",
        headers=auth(people["alice"]),
    )
    assert other.json() == {
        "action": "require",
        "rule": None,
        "approvals_required": 1,
        "approver_group": None,
    }
    assert counts() == before


# Quorum and groups


def test_quorum_of_two_distinct_approvers(people):
    rule(people, name="finance", tool="pay_*", approvals_required=2, approver_group="finance")
    ask(people, tool="pay_invoice")
    first = approval_decide(call_id="call-1", user=people["alice"].user, decision="APPROVE")
    assert first.status == "pending" and [a["user"] for a in first.approvals] == ["alice"]
    with pytest.raises(ApplicationError) as twice:
        approval_decide(call_id="call-1", user=people["alice"].user, decision="APPROVE")
    assert twice.value.code == "already_approved"
    final = approval_decide(call_id="call-1", user=people["bob"].user, decision="APPROVE")
    assert final.status == "approved" and [a["user"] for a in final.approvals] == ["alice", "bob"]
    recorded = AuditEntry.objects.filter(event_type="hitl_approval_recorded")
    assert [a.data["approved_by"] for a in recorded] == ["alice"]
    assert AuditEntry.objects.filter(event_type="hitl_decision_made").count() == 1


def test_one_reject_rejects_and_edit_only_as_the_last_approval(people):
    rule(people, name="finance", tool="pay_*", approvals_required=2, approver_group="finance")
    ask(people, "c-1", tool="pay_invoice")
    with pytest.raises(ApplicationError) as early_edit:
        approval_decide(call_id="c-1", user=people["alice"].user, decision="EDIT", modified_args={"a": 1})
    assert early_edit.value.code == "more_approvals_needed"
    approval_decide(call_id="c-1", user=people["alice"].user, decision="APPROVE")
    edited = approval_decide(call_id="c-1", user=people["bob"].user, decision="EDIT", modified_args={"a": 1})
    assert edited.status == "edited"
    ask(people, "c-2", tool="pay_invoice")
    approval_decide(call_id="c-2", user=people["alice"].user, decision="APPROVE")
    rejected = approval_decide(call_id="c-2", user=people["bob"].user, decision="REJECT")
    assert rejected.status == "rejected"


def test_only_the_group_decides_and_the_requester_never_approves(people):
    rule(people, name="finance", tool="pay_*", approver_group="finance")
    ask(people, tool="pay_invoice", by="bob")
    with pytest.raises(ApplicationError) as outsider:
        approval_decide(call_id="call-1", user=people["carol"].user, decision="APPROVE")
    assert outsider.value.status == 403
    with pytest.raises(ApplicationError) as own:
        approval_decide(call_id="call-1", user=people["bob"].user, decision="APPROVE")
    assert own.value.status == 403
    response = Client().post(
        "/api/hitl/requests/call-1/decision/",
        {"decision": "APPROVE"},
        content_type="application/json",
        headers=auth(people["carol"]),
    )
    assert response.status_code == 403
    assert (
        approval_decide(call_id="call-1", user=people["alice"].user, decision="APPROVE").status == "approved"
    )


def _race(people, call_id, decisions):
    barrier = threading.Barrier(len(decisions))
    outcomes: dict[str, object] = {}

    def decide(who, decision):
        close_old_connections()
        try:
            barrier.wait()
            outcomes[who] = approval_decide(call_id=call_id, user=people[who].user, decision=decision).status
        except ApplicationError as error:
            outcomes[who] = error.code
        finally:
            close_old_connections()

    threads = [threading.Thread(target=decide, args=pair) for pair in decisions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return outcomes


def _two_approvers_at_once(people):
    rule(people, name="quorum", approvals_required=2)
    ask(people)
    outcomes = _race(people, "call-1", [("alice", "APPROVE"), ("bob", "APPROVE")])
    request = ApprovalRequest.objects.get(call_id="call-1")
    assert request.status == "approved", outcomes
    assert sorted(a["user"] for a in request.approvals) == ["alice", "bob"]
    assert sorted(outcomes.values()) == ["approved", "pending"]

    ask(people, "call-2")
    outcomes = _race(people, "call-2", [("alice", "APPROVE"), ("bob", "REJECT")])
    request = ApprovalRequest.objects.get(call_id="call-2")
    # The reject wins: whichever went first, the request ends rejected (an approval of two decides nothing).
    assert request.status == "rejected", outcomes
    assert StoredEvent.objects.filter(event_type="hitl_decision_made").count() == 2


@pytest.mark.postgres
def test_two_approvers_at_once_postgres(people):
    _two_approvers_at_once(people)


def test_two_approvers_at_once_sqlite(people):
    _two_approvers_at_once(people)


# Escalation


def test_escalation_with_a_fake_clock(people):
    rule(
        people,
        name="finance",
        tool="pay_*",
        approver_group="finance",
        escalate_after_s=60,
        escalate_to_group="seniors",
    )
    request = ask(people, tool="pay_invoice", timeout_s=3600)
    start = request.created_at
    assert approval_escalate(now=start + timedelta(seconds=59)) == 0
    with pytest.raises(ApplicationError) as before:
        approval_decide(call_id="call-1", user=people["carol"].user, decision="APPROVE")
    assert before.value.status == 403
    assert approval_escalate(now=start + timedelta(seconds=61)) == 1
    assert approval_escalate(now=start + timedelta(seconds=62)) == 0  # once
    escalated = ApprovalRequest.objects.get(call_id="call-1")
    assert escalated.escalated_at == start + timedelta(seconds=61)
    entry = AuditEntry.objects.get(event_type="tool_approval_escalated")
    assert entry.data["call_id"] == "call-1" and entry.data["escalate_to_group"] == "seniors"
    listed = Client().get("/api/hitl/requests/call-1/", headers=auth(people["alice"])).json()
    assert listed["escalated_at"] is not None
    assert (
        approval_decide(call_id="call-1", user=people["carol"].user, decision="APPROVE").status == "approved"
    )


# Standing approvals


def test_standing_approval_bound_to_exact_arguments_scope_and_time(people):
    ask(people, "c-1", arguments={"table": "users", "limit": 10})
    approval_decide(
        call_id="c-1",
        user=people["alice"].user,
        decision="APPROVE",
        remember={"scope": "session", "ttl_s": 600},
    )
    standing = StandingApproval.objects.get()
    assert standing.args_sha256 == args_sha256({"limit": 10, "table": "users"})
    # Same tool, same arguments (key order does not matter), same session: approved by it.
    again = ask(people, "c-2", arguments={"limit": 10, "table": "users"})
    assert (again.status, again.rule, again.channel) == ("approved", f"standing:{standing.pk}", "policy")
    # A different argument, another session, another agent's account: not approved.
    assert ask(people, "c-3", arguments={"table": "users", "limit": 11}).status == "pending"
    assert ask(people, "c-4", arguments={"table": "users", "limit": 10}, session="s-2").status == "pending"
    assert ask(people, "c-5", arguments={"table": "users", "limit": 10}, by="other_agent").status == "pending"
    # Expired: not approved.
    StandingApproval.objects.filter(pk=standing.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert ask(people, "c-6", arguments={"table": "users", "limit": 10}).status == "pending"


def test_standing_approval_is_revocable_and_never_overrides_a_reject_rule(people):
    ask(people, "c-1")
    approval_decide(
        call_id="c-1",
        user=people["alice"].user,
        decision="APPROVE",
        remember={"scope": "agent", "ttl_s": 600},
    )
    standing = StandingApproval.objects.get()
    assert ask(people, "c-2").status == "approved"
    standing_revoke(standing_id=standing.pk, user=people["bob"].user)
    assert ask(people, "c-3").status == "pending"
    assert AuditEntry.objects.filter(event_type="hitl_standing_approval_changed").count() == 2


def test_reject_rule_wins_over_standing_approval(people):
    ask(people, "c-1")
    approval_decide(
        call_id="c-1",
        user=people["alice"].user,
        decision="APPROVE",
        remember={"scope": "agent", "ttl_s": 600},
    )
    rule(people, name="no-deletes", tool="delete_*", action="reject")
    assert ask(people, "c-2").status == "rejected"


@pytest.mark.parametrize(
    ("remember", "field"),
    [
        ({"scope": "forever", "ttl_s": 5}, "remember.scope"),
        ({"scope": "session", "ttl_s": -5}, "remember.ttl_s"),
        ({"scope": "session", "ttl_s": "5"}, "remember.ttl_s"),
        ({"scope": "session"}, "remember.ttl_s"),
        ("session", "remember"),
    ],
)
def test_bad_remember_is_400_naming_the_field(people, remember, field):
    ask(people)
    response = Client().post(
        "/api/hitl/requests/call-1/decision/",
        {"decision": "APPROVE", "remember": remember},
        content_type="application/json",
        headers=auth(people["alice"]),
    )
    assert response.status_code == 400
    assert error_field(response) == field
    assert ApprovalRequest.objects.get().status == "pending"


def test_remember_over_rest_and_the_page_section(people):
    ask(people)
    response = Client().post(
        "/api/hitl/requests/call-1/decision/",
        {"decision": "APPROVE", "remember": {"scope": "session", "ttl_s": 60}},
        content_type="application/json",
        headers=auth(people["alice"]),
    )
    assert response.status_code == 200 and response.json()["status"] == "approved"
    standing = StandingApproval.objects.get()
    client = Client()
    client.force_login(people["bob"].user)
    page = client.get("/hitl/")
    assert f'data-standing-id="{standing.pk}"' in page.content.decode()
    revoked = client.post(f"/hitl/standing/{standing.pk}/revoke/")
    assert revoked.status_code == 302
    assert StandingApproval.objects.get().revoked_at is not None


# Output


def test_request_json_carries_the_policy_fields(people):
    rule(people, name="finance", tool="pay_*", approvals_required=2, approver_group="finance")
    ask(people, tool="pay_invoice", arguments={"amount": 5})
    approval_decide(call_id="call-1", user=people["alice"].user, decision="APPROVE")
    body = Client().get("/api/hitl/requests/call-1/", headers=auth(people["alice"])).json()
    assert body["approvals_required"] == 2
    assert [a["user"] for a in body["approvals"]] == ["alice"]
    assert body["rule"] == "finance@1"
    assert body["args_sha256"] == args_sha256({"amount": 5})
    assert body["escalated_at"] is None
    client = Client()
    client.force_login(people["bob"].user)
    page = client.get("/hitl/").content.decode()
    assert "1 of 2: alice" in page and "finance@1" in page


def test_rest_request_decided_by_a_rule_answers_decided(people):
    rule(people, name="approve-reads", tool="read_*", action="approve")
    response = Client().post(
        "/api/hitl/requests/",
        {"session_id": "s", "call_id": "c-1", "tool_name": "read_file", "arguments": {"p": 1}},
        content_type="application/json",
        headers=auth(people["agent"]),
    )
    assert response.status_code == 201
    body = response.json()
    assert (body["status"], body["rule"], body["channel"], body["decided_by"]) == (
        "approved",
        "approve-reads@1",
        "policy",
        None,
    )


def test_metrics_count_decisions_by_rule(people):
    rule(people, name="approve-reads", tool="read_*", action="approve")
    ask(people, "c-1", tool="read_file")
    ask(people, "c-2", tool="read_file")
    client = Client()
    client.force_login(people["alice"].user)
    from ops.metrics import database_figures, decisions_by_rule_family, render

    text = render([decisions_by_rule_family(database_figures()["decisions_by_rule"])])
    assert 'eventbus_approval_decisions_total{rule="approve-reads",status="approved"} 2' in text


def test_admin_lists_rules_and_tests_one_creating_nothing(people):
    created = rule(people, name="approve-reads", tool="read_*", action="approve")
    people["alice"].user.is_staff = True
    people["alice"].user.save(update_fields=["is_staff"])
    client = Client()
    client.force_login(people["alice"].user)
    assert "approve-reads" in client.get("/admin/hitl/approvalrule/").content.decode()
    url = f"/admin/hitl/approvalrule/{created.pk}/test/"
    page = client.post(url, {"body": '{"tool_name": "read_file", "arguments": {}}'})
    text = page.content.decode()
    assert page.status_code == 200 and "matches" in text and "approve-reads@1" in text
    assert not ApprovalRequest.objects.exists()
    disabled = client.post(
        "/admin/hitl/approvalrule/", {"action": "disable_selected", "_selected_action": [created.pk]}
    )
    assert disabled.status_code == 302
    assert ApprovalRule.objects.get().version == 2
    assert client.get("/admin/hitl/approvalrequest/?rule=approve-reads@1").status_code == 200
