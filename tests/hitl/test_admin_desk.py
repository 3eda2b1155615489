"""Issue 14, the approval requests' admin at a desk: the Decide panel as a fieldset of the change form
with its live check, the list's order by deadline, who decided (the expiry too), the created range,
auditors read-only, and a changelist whose queries do not grow with its rows."""

import json
import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts.roles import AUDITORS
from accounts.services import roles_setup
from hitl.models import ApprovalRequest, ApprovalStatus
from hitl.services import approval_decide, approval_expire

from . import test_admin as base
from .test_admin import CHANGELIST, ask, change_url, client_for, refreshed, shown

# The fixtures of the admin's other tests.
root, operator, bob, schemas = base.root, base.operator, base.bob, base.schemas

pytestmark = pytest.mark.django_db


def check_url(request: ApprovalRequest) -> str:
    return reverse("admin:hitl_approvalrequest_check", args=[request.pk])


@pytest.fixture
def auditor(django_user_model):
    roles_setup()
    user = django_user_model.objects.create_user("audrey", password="pw", is_staff=True)
    user.groups.add(Group.objects.get(name=AUDITORS))
    return user


def test_decide_panel_is_a_full_width_fieldset_of_the_change_form(operator):
    request = ask("call-1")
    html = client_for(operator).get(change_url(request)).content.decode()

    start = html.index('id="approvalrequest_form"')
    form = html[start : html.index("</form>", start)]
    # Inside the admin's own form, as a fieldset like the others (not a column beside it).
    assert re.search(r'<fieldset class="module hitl-decide" id="hitl-decision"', form)
    assert 'name="arguments"' in form and 'name="comment"' in form
    assert 'value="approve"' in form and 'value="edit"' in form and 'value="reject"' in form
    assert "hitl/admin-decide.js" in html and "hitl/admin-decide.css" in html
    config = json.loads(re.search(r'id="hitl-decide-config"[^>]*>(.*?)</script>', html, re.S).group(1))
    assert config == {"proposed": request.arguments, "check_url": check_url(request)}


def test_decide_panel_live_check_uses_the_tools_json_schema_and_saves_nothing(operator, schemas):
    schemas("write_file", {"type": "object", "properties": {"size": {"type": "integer"}}})
    request = ask("call-1")
    client = client_for(operator)

    wrong = client.post(check_url(request), {"arguments": json.dumps({"size": "big"})}).json()
    assert wrong["ok"] is False and any("size" in error for error in wrong["errors"])
    broken = client.post(check_url(request), {"arguments": "{not json"}).json()
    assert broken["ok"] is False and broken["errors"]
    right = client.post(check_url(request), {"arguments": json.dumps({"size": 3})}).json()
    assert right == {"ok": True, "errors": []}
    assert refreshed(request).status == ApprovalStatus.PENDING  # a check decides nothing
    assert client.get(check_url(request)).status_code == 405


def test_approve_with_edits_through_the_panel_reaches_the_request(operator):
    request = ask("call-1")
    edited = {"path": "b.py", "content": "x", "mode": "w"}
    client = client_for(operator)
    # "Approve with edits…" shows the difference first; its confirmation decides.
    preview = client.post(change_url(request), {"_decision": "edit", "arguments": json.dumps(edited)})
    assert preview.status_code == 200 and refreshed(request).status == ApprovalStatus.PENDING
    confirm = {"_decision": "confirm_edit", "arguments": json.dumps(edited), "comment": "safer path"}
    assert client.post(change_url(request), confirm).status_code == 302
    decided = refreshed(request)
    assert decided.status == ApprovalStatus.EDITED
    assert decided.modified_args == edited and decided.decided_by_username == operator.username


def test_auditors_view_approval_requests_read_only_without_a_decide_panel(auditor):
    request = ask("call-1")
    client = client_for(auditor)

    assert shown(client.get(CHANGELIST)) == ["call-1"]
    html = client.get(change_url(request)).content.decode()
    assert 'id="hitl-decision"' not in html and 'value="approve"' not in html
    assert 'data-testid="read-only-note"' in html
    client.post(change_url(request), {"_decision": "approve", "arguments": json.dumps(request.arguments)})
    assert refreshed(request).status == ApprovalStatus.PENDING
    assert client.post(check_url(request), {"arguments": "{}"}).status_code == 403


def test_pending_requests_are_listed_by_deadline_not_creation(root, bob):
    later = ask("expires-later", timeout_s=600)
    sooner = ask("expires-sooner", timeout_s=60)
    decided = ask("decided")
    approval_decide(call_id=decided.call_id, user=bob, decision="APPROVE")
    assert later.created_at < sooner.created_at
    client = client_for(root)

    assert shown(client.get(CHANGELIST)) == ["expires-sooner", "expires-later", "decided"]
    assert shown(client.get(CHANGELIST, {"status__exact": "pending"})) == ["expires-sooner", "expires-later"]


def test_expired_rows_show_the_expiry_as_decider_and_decided_rows_the_name(root, bob):
    ask("will-expire", timeout_s=5)
    approved = ask("approved")
    approval_decide(call_id=approved.call_id, user=bob, decision="APPROVE")
    assert approval_expire(now=timezone.now() + timedelta(seconds=10)) == 1
    html = client_for(root).get(CHANGELIST).content.decode()

    rows = {
        call: cells
        for call, cells in re.findall(r'<span title="([^"]+)">[^<]*</span>.*?</th>(.*?)</tr>', html, re.S)
    }
    assert re.search(r'class="field-decided_by_name">expiry<', rows["will-expire"])
    assert re.search(r'class="field-decided_by_name">bob<', rows["approved"])
    assert "decided by" in html.lower() and "Decided by username" not in html


def test_created_date_range_filters_approval_requests(root):
    old = ask("old")
    ask("new")
    ApprovalRequest.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=3))
    client = client_for(root)
    since = (timezone.now() - timedelta(days=1)).isoformat()
    until = (timezone.now() - timedelta(days=2)).isoformat()

    assert shown(client.get(CHANGELIST, {"since": since})) == ["new"]
    assert shown(client.get(CHANGELIST, {"until": until})) == ["old"]
    response = client.get(CHANGELIST, {"since": "yesterday-ish"})
    assert sorted(shown(response)) == ["new", "old"]  # not narrowed; the box says why
    assert "is not a date and time" in response.content.decode()


def test_approval_changelist_query_count_does_not_grow_at_200_rows(root, bob):
    client = client_for(root)

    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            response = client.get(CHANGELIST, {"q": "call"})
        assert response.status_code == 200
        return len(queries)

    for i in range(3):
        ask(f"call-{i}", tool=f"tool-{i}", session=f"s-{i}")
    few = count()
    for i in range(3, 200):
        ask(f"call-{i}", tool=f"tool-{i % 9}", agent=f"agent-{i % 5}", session=f"s-{i}")
    for i in range(3, 200, 4):
        approval_decide(call_id=f"call-{i}", user=bob, decision="REJECT")
    assert count() == few
