"""The admin of approval requests: the changelist, the actions and the change page, all deciding
through hitl.services.approval_decide as the signed-in user."""

import json
import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, Permission
from django.contrib.messages import get_messages
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts.roles import OPERATORS
from accounts.services import roles_setup
from events.event_bus import event_bus
from events.event_store import event_store
from events.models import StoredEvent
from hitl import conf
from hitl.conf import register_tool_schema
from hitl.models import ApprovalRequest
from hitl.services import approval_decide, approval_request

CHANGELIST = reverse("admin:hitl_approvalrequest_changelist")
ARGS = {"path": "a.py", "content": "print('hi')", "mode": "w"}


def change_url(request: ApprovalRequest) -> str:
    return reverse("admin:hitl_approvalrequest_change", args=[request.pk])


def ask(call_id: str, *, tool="write_file", agent="coder", session="session-1", arguments=None, **extra):
    request, created = approval_request(
        call_id=call_id,
        session_id=session,
        tool_name=tool,
        agent=agent,
        arguments=dict(ARGS) if arguments is None else arguments,
        reason="writes a file",
        **extra,
    )
    assert created
    return request


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def shown(response) -> list[str]:
    """The call ids of the changelist's rows, in the order shown."""
    return [row.call_id for row in response.context["cl"].result_list]


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def refreshed(request: ApprovalRequest) -> ApprovalRequest:
    return ApprovalRequest.objects.get(pk=request.pk)


@pytest.fixture
def root(django_user_model):
    return django_user_model.objects.create_superuser("root", "root@example.com", "pw")


@pytest.fixture
def operator(django_user_model):
    """A staff user in the operators group of setup_roles."""
    roles_setup()
    user = django_user_model.objects.create_user("olga", password="pw", is_staff=True)
    user.groups.add(Group.objects.get(name=OPERATORS))
    return user


@pytest.fixture
def viewer(django_user_model):
    """Staff who may view approval requests but not decide them."""
    user = django_user_model.objects.create_user("vera", password="pw", is_staff=True)
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="hitl", codename="view_approvalrequest")
    )
    return user


@pytest.fixture
def bob(django_user_model):
    """Another operator, who sometimes decides first."""
    user = django_user_model.objects.create_user("bob", password="pw")
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="hitl", codename="decide_approvalrequest")
    )
    return user


@pytest.fixture
def schemas(monkeypatch):
    """register_tool_schema for one test: the registry is put back as it was afterwards."""
    monkeypatch.setattr(conf, "_registered", dict(conf._registered))
    return register_tool_schema


# Changelist


@pytest.mark.django_db
def test_changelist_shows_pending_first_with_time_left(root, bob):
    old_pending = ask("call-old")
    decided = ask("call-decided")
    new_pending = ask("call-new")
    approval_decide(call_id=decided.call_id, user=bob, decision="APPROVE")
    ApprovalRequest.objects.filter(pk=decided.pk).update(created_at=timezone.now() + timedelta(hours=1))

    response = client_for(root).get(CHANGELIST)

    assert response.status_code == 200
    rows = shown(response)
    assert rows.index("call-old") < rows.index("call-decided")
    assert rows.index("call-new") < rows.index("call-decided")
    assert set(rows) == {old_pending.call_id, new_pending.call_id, decided.call_id}
    html = response.content.decode()
    assert re.search(r"in 1[45]\xa0minutes", html)  # the time left of a pending request (15 min default)
    assert "bob" in html  # decided_by_username
    assert "Approve selected" in html and "Reject selected" in html
    assert "delete_selected" not in html


@pytest.mark.django_db
def test_changelist_filters_by_status_tool_and_agent(root, bob):
    ask("call-1", tool="write_file", agent="coder")
    ask("call-2", tool="shell", agent="coder")
    ask("call-3", tool="shell", agent="reviewer")
    approval_decide(call_id="call-3", user=bob, decision="REJECT")
    client = client_for(root)

    assert sorted(shown(client.get(CHANGELIST, {"status__exact": "pending"}))) == ["call-1", "call-2"]
    assert shown(client.get(CHANGELIST, {"status__exact": "rejected"})) == ["call-3"]
    assert sorted(shown(client.get(CHANGELIST, {"tool_name": "shell"}))) == ["call-2", "call-3"]
    assert shown(client.get(CHANGELIST, {"agent": "reviewer"})) == ["call-3"]
    assert shown(client.get(CHANGELIST, {"agent": "coder", "tool_name": "shell"})) == ["call-2"]
    assert shown(client.get(CHANGELIST, {"tool_name": "sh"})) == []  # exact, not a substring
    assert len(shown(client.get(CHANGELIST, {"tool_name": ""}))) == 3  # an empty box: no filter

    html = client.get(CHANGELIST, {"agent": "coder"}).content.decode()
    # The tool box keeps the agent filter when submitted; the pending tools are offered as links.
    tool_box = html[html.index('data-filter-title="tool"') :]
    tool_box = tool_box[: tool_box.index("</details>")]
    assert '<input type="hidden" name="agent" value="coder">' in tool_box
    assert 'name="tool_name"' in tool_box
    assert "?agent=coder&amp;tool_name=shell" in tool_box
    assert "?agent=coder&amp;tool_name=write_file" in tool_box


@pytest.mark.django_db
def test_search_by_the_beginning_of_a_call_id_tool_agent_or_session(root):
    """Issue 14: `refund` and `sim-25cec` found nothing (ids matched exactly). On SQLite a search is a
    prefix of the call id, tool, agent or session, each served by its B-tree index."""
    ask("run-abc-1", session="session-a", tool="refund_order", agent="billing-bot")
    ask("run-abc-2", session="sim-25cec0f1", tool="write_file")
    ask("other-3", session="session-a", tool="shell", agent="coder")
    client = client_for(root)

    assert sorted(shown(client.get(CHANGELIST, {"q": "run-abc"}))) == ["run-abc-1", "run-abc-2"]
    assert shown(client.get(CHANGELIST, {"q": "run-abc-2"})) == ["run-abc-2"]
    assert shown(client.get(CHANGELIST, {"q": "refund"})) == ["run-abc-1"]  # a tool's beginning
    assert shown(client.get(CHANGELIST, {"q": "sim-25cec"})) == ["run-abc-2"]  # a session's
    assert shown(client.get(CHANGELIST, {"q": "billing"})) == ["run-abc-1"]  # an agent's
    assert sorted(shown(client.get(CHANGELIST, {"q": "session"}))) == ["other-3", "run-abc-1"]
    assert shown(client.get(CHANGELIST, {"q": "abc"})) == []  # on SQLite a prefix, not a substring
    assert shown(client.get(CHANGELIST, {"q": "100%_"})) == []  # LIKE's wildcards are text


@pytest.mark.django_db
def test_search_by_part_of_a_tool_agent_or_session_on_postgresql_uses_ilike():
    """On PostgreSQL the search is ILIKE '%term%' on each field, which its trigram index serves
    (hitl/migrations/0004_trigram_search.py), with LIKE's wildcards escaped."""
    from core.admin_kit import ILike, text_search

    class FakeConnection:
        vendor = "postgresql"

    queryset = ApprovalRequest.objects.all()
    import core.admin_kit as kit

    original = kit.connections
    kit.connections = {queryset.db: FakeConnection()}  # type: ignore[assignment]
    try:
        condition = text_search(queryset, ["tool_name", "agent"], "50%_off")
    finally:
        kit.connections = original
    lookups = [child for child in condition.flatten() if isinstance(child, ILike)]
    assert [lookup.lhs.name for lookup in lookups] == ["tool_name", "agent"]
    assert {lookup.rhs.value for lookup in lookups} == {"%50\\%\\_off%"}


@pytest.mark.django_db
def test_changelist_queries_do_not_grow_with_rows(root, bob):
    client = client_for(root)

    def count_queries() -> int:
        with CaptureQueriesContext(connection) as queries:
            response = client.get(CHANGELIST)
        assert response.status_code == 200
        # No filter runs a DISTINCT over the table (Django's default one for a CharField would).
        assert not [q["sql"] for q in queries if "DISTINCT" in q["sql"].upper()]
        return len(queries)

    for i in range(5):
        ask(f"few-{i}", tool=f"tool-{i}", agent=f"agent-{i}")
    approval_decide(call_id="few-0", user=bob, decision="APPROVE")
    few = count_queries()
    for i in range(45):
        ask(f"many-{i}", tool=f"tool-{i}", agent=f"agent-{i % 7}")
    for i in range(0, 45, 3):
        approval_decide(call_id=f"many-{i}", user=bob, decision="REJECT")
    many = count_queries()

    assert many == few
    assert few <= 10


# Actions


@pytest.mark.django_db
def test_approve_selected_decides_each_through_the_service(root, bob):
    first, second, third = ask("call-1"), ask("call-2"), ask("call-3")
    rejected = ask("call-4")
    approval_decide(call_id=rejected.call_id, user=bob, decision="REJECT")

    response = client_for(root).post(
        CHANGELIST,
        {
            "action": "approve_selected",
            "index": 0,
            "_selected_action": [r.pk for r in (first, second, third, rejected)],
        },
    )

    assert response.status_code == 302
    for request in (first, second, third):
        request = refreshed(request)
        assert request.status == "approved"
        assert request.decided_by == root and request.decided_by_username == "root"
        assert request.channel == "admin"
    assert refreshed(rejected).status == "rejected" and refreshed(rejected).decided_by == bob
    assert messages_of(response) == ["3 approved; 1 could not be: call-4: already rejected by bob."]


@pytest.mark.django_db
def test_operator_approves_through_the_action(operator):
    request = ask("call-1")

    response = client_for(operator).post(
        CHANGELIST, {"action": "approve_selected", "index": 0, "_selected_action": [request.pk]}
    )

    assert messages_of(response) == ["1 approved."]
    request = refreshed(request)
    assert (request.status, request.decided_by, request.channel) == ("approved", operator, "admin")


@pytest.mark.django_db
def test_reject_selected_asks_for_a_comment_then_rejects(operator):
    first, second = ask("call-1"), ask("call-2")
    client = client_for(operator)

    page = client.post(
        CHANGELIST, {"action": "reject_selected", "index": 0, "_selected_action": [first.pk, second.pk]}
    )

    assert page.status_code == 200
    assert "admin/hitl/approvalrequest/reject_selected_confirmation.html" in [t.name for t in page.templates]
    html = page.content.decode()
    assert "Reject 2 pending requests?" in html
    assert '<textarea name="comment"' in html
    assert "call-1" in html and "call-2" in html
    assert {refreshed(first).status, refreshed(second).status} == {"pending"}  # nothing yet

    response = client.post(
        CHANGELIST,
        {
            "action": "reject_selected",
            "post": "yes",
            "_selected_action": [first.pk, second.pk],
            "comment": "not on a Friday",
        },
    )

    assert response.status_code == 302
    assert messages_of(response) == ["2 rejected."]
    for request in (first, second):
        request = refreshed(request)
        assert (request.status, request.comment, request.channel) == ("rejected", "not on a Friday", "admin")
        assert request.decided_by == operator


@pytest.mark.django_db
def test_reject_selected_comment_is_optional(root):
    request = ask("call-1")

    client_for(root).post(
        CHANGELIST,
        {"action": "reject_selected", "post": "yes", "_selected_action": [request.pk], "comment": ""},
    )

    assert (refreshed(request).status, refreshed(request).comment) == ("rejected", "")


# Change page of a pending request


@pytest.mark.django_db
def test_pending_change_page_shows_the_request_and_the_decision_form(operator):
    request = ask("call-1", arguments={"path": "a.py", "content": "<b>x</b>"})

    response = client_for(operator).get(change_url(request))

    assert response.status_code == 200
    html = response.content.decode()
    assert "writes a file" in html and "coder" in html and "write_file" in html
    assert re.search(r"in 1[45]\xa0minutes", html)
    assert '<pre class="hitl-json">{\n  &quot;path&quot;: &quot;a.py&quot;,' in html  # pretty, escaped
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html
    form = response.context["decide_form"]
    assert json.loads(form.initial["arguments"]) == {"path": "a.py", "content": "<b>x</b>"}
    assert '<textarea name="comment"' in html
    for value in ("approve", "edit", "reject"):
        assert f'name="_decision" value="{value}"' in html
    assert "csrfmiddlewaretoken" in html


@pytest.mark.django_db
def test_approve_and_reject_buttons(operator):
    approved, rejected = ask("call-1"), ask("call-2")
    client = client_for(operator)

    response = client.post(change_url(approved), {"_decision": "approve", "comment": "fine"})
    assert response.status_code == 302 and response["Location"].startswith(CHANGELIST)
    response = client.post(change_url(rejected), {"_decision": "reject", "comment": "no"})
    assert response.status_code == 302

    approved, rejected = refreshed(approved), refreshed(rejected)
    assert (approved.status, approved.comment, approved.modified_args) == ("approved", "fine", None)
    assert (rejected.status, rejected.comment) == ("rejected", "no")
    assert approved.decided_by == rejected.decided_by == operator
    assert {approved.channel, rejected.channel} == {"admin"}


@pytest.mark.django_db
def test_approve_refuses_when_the_arguments_were_edited(operator):
    request = ask("call-1")

    response = client_for(operator).post(
        change_url(request), {"_decision": "approve", "arguments": json.dumps({**ARGS, "path": "b.py"})}
    )

    assert response.status_code == 200
    assert "“Approve” runs the proposed ones" in response.content.decode()
    assert refreshed(request).status == "pending"


@pytest.mark.django_db
def test_the_approver_is_the_signed_in_user_whatever_the_form_says(operator, bob):
    request = ask("call-1")

    client_for(operator).post(
        change_url(request),
        {"_decision": "approve", "decided_by": bob.pk, "user": "bob", "decided_by_username": "bob"},
    )

    request = refreshed(request)
    assert (request.decided_by, request.decided_by_username) == (operator, "olga")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('{"path": "a.py",', "This is not valid JSON: Expecting property name enclosed in double quotes"),
        ('["a.py"]', "The arguments must be a JSON object ({...}), not list."),
        ('{"path": "a.py", "path": "b.py"}', "the key &#x27;path&#x27; appears twice"),
        ('{"size": NaN}', "NaN is not JSON"),
        ("  ", "Enter the arguments as a JSON object"),
    ],
)
def test_edit_with_invalid_json_shows_the_error_and_saves_nothing(operator, text, error):
    request = ask("call-1")

    response = client_for(operator).post(change_url(request), {"_decision": "edit", "arguments": text})

    assert response.status_code == 200
    html = response.content.decode()
    assert error in html
    assert "Nothing was saved" in html
    assert response.context["decide_form"]["arguments"].value() == text  # kept for fixing
    assert refreshed(request).status == "pending"


@pytest.mark.django_db
def test_edit_without_changes_is_refused_not_approved(operator):
    request = ask("call-1")
    # The same object, keys reordered and re-indented: still unchanged.
    same = json.dumps({"mode": "w", "content": "print('hi')", "path": "a.py"})

    for decision in ("edit", "confirm_edit"):
        response = client_for(operator).post(change_url(request), {"_decision": decision, "arguments": same})
        assert response.status_code == 200
        assert "These are the proposed arguments, unchanged" in response.content.decode()
    assert refreshed(request).status == "pending"


@pytest.mark.django_db
def test_edit_shows_the_difference_then_saves_as_edited(operator):
    request = ask("call-1")
    edited = {"path": "b.py", "content": "print('hi')", "backup": True}
    client = client_for(operator)

    preview = client.post(
        change_url(request), {"_decision": "edit", "arguments": json.dumps(edited), "comment": "safer path"}
    )

    assert preview.status_code == 200
    assert "admin/hitl/approvalrequest/confirm_edit.html" in [t.name for t in preview.templates]
    html = preview.content.decode()
    assert refreshed(request).status == "pending"  # nothing saved by the preview
    diff = html[html.index('id="hitl-diff"') : html.index("</fieldset>", html.index('id="hitl-diff"'))]
    assert '<div class="hitl-diff-removed"><span>-</span>  &quot;path&quot;: &quot;a.py&quot;</div>' in diff
    assert '<div class="hitl-diff-added"><span>+</span>  &quot;path&quot;: &quot;b.py&quot;</div>' in diff
    assert '<div class="hitl-diff-removed"><span>-</span>  &quot;mode&quot;: &quot;w&quot;,</div>' in diff
    assert '<div class="hitl-diff-added"><span>+</span>  &quot;backup&quot;: true,</div>' in diff
    assert (
        '<div class="hitl-diff-same"><span></span>  &quot;content&quot;: &quot;print(&#x27;hi&#x27;)&quot;,'
        in diff
    )
    assert "Changed: <code>path</code>" in html
    assert "Added: <code>backup</code>" in html and "Removed: <code>mode</code>" in html
    hidden = preview.context["edited_line"]
    assert json.loads(hidden) == edited

    response = client.post(
        change_url(request), {"_decision": "confirm_edit", "arguments": hidden, "comment": "safer path"}
    )

    assert response.status_code == 302
    request = refreshed(request)
    assert request.status == "edited"
    assert request.modified_args == edited
    assert request.arguments == ARGS  # the proposal is kept apart
    assert (request.decided_by, request.channel, request.comment) == (operator, "admin", "safer path")


@pytest.mark.django_db
def test_back_to_editing_keeps_the_edit_and_the_comment(operator):
    request = ask("call-1")

    response = client_for(operator).post(
        change_url(request), {"_decision": "back", "arguments": '{"path": "b.py"}', "comment": "hm"}
    )

    assert response.status_code == 200
    form = response.context["decide_form"]
    assert form.initial == {"arguments": '{\n  "path": "b.py"\n}', "comment": "hm"}
    assert refreshed(request).status == "pending"


@pytest.mark.django_db
def test_edit_violating_the_tool_schema_shows_the_field_error(operator, schemas):
    schemas(
        "write_file",
        {
            "type": "object",
            "properties": {"path": {"type": "string"}, "size": {"type": "integer"}},
            "required": ["path"],
        },
    )
    request = ask("call-1")
    client = client_for(operator)
    wrong = json.dumps({"path": "b.py", "size": "big"})

    # At the preview, before any diff is shown...
    preview = client.post(change_url(request), {"_decision": "edit", "arguments": wrong})
    # ...and from the service itself, if the edit reaches the last step anyway.
    confirm = client.post(change_url(request), {"_decision": "confirm_edit", "arguments": wrong})

    for response in (preview, confirm):
        assert response.status_code == 200
        errors = response.context["decide_form"].errors["arguments"]
        assert errors == ["arguments.size: 'big' is not of type 'integer'"]
        assert (
            "arguments.size: &#x27;big&#x27; is not of type &#x27;integer&#x27;" in response.content.decode()
        )
    assert refreshed(request).status == "pending"


@pytest.mark.django_db
def test_a_conflict_is_shown_plainly_with_the_current_state(operator, bob):
    request = ask("call-1")
    client = client_for(operator)
    preview = client.post(change_url(request), {"_decision": "edit", "arguments": '{"path": "b.py"}'})
    assert preview.status_code == 200
    approval_decide(call_id=request.call_id, user=bob, decision="REJECT", comment="mine")

    response = client.post(
        change_url(request), {"_decision": "confirm_edit", "arguments": '{"path": "b.py"}'}, follow=True
    )

    assert response.redirect_chain[-1][0] == change_url(request)
    html = response.content.decode()
    assert "Nothing was saved: call-1 is already rejected by bob." in html
    assert 'name="_decision"' not in html  # the page now shows the decided request
    request = refreshed(request)
    assert (request.status, request.decided_by, request.modified_args) == ("rejected", bob, None)


@pytest.mark.django_db
def test_an_expired_request_cannot_be_approved(operator):
    request = ask("call-1")
    ApprovalRequest.objects.filter(pk=request.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    client = client_for(operator)

    listed = client.get(CHANGELIST).content.decode()
    response = client.post(change_url(request), {"_decision": "approve"}, follow=True)

    assert "overdue: reject on expiry" in listed
    assert "Nothing was saved: call-1 is expired." in response.content.decode()
    assert refreshed(request).status == "pending"  # left to the sweeper's on_expire


# Change page of a decided request


@pytest.mark.django_db
def test_decided_change_page_is_read_only_and_shows_the_decision(root, operator):
    request = ask("call-1")
    approval_decide(
        call_id=request.call_id,
        user=operator,
        decision="EDIT",
        modified_args={**ARGS, "path": "safe.py"},
        comment="moved it",
        channel="admin",
    )
    client = client_for(root)

    response = client.get(change_url(request))

    assert response.status_code == 200
    html = response.content.decode()
    assert response.context["decide_form"] is None
    assert 'name="_decision"' not in html and "<textarea" not in html
    assert 'name="_save"' not in html
    for text in ("approved with edits", "olga", "moved it", "admin", "Proposed arguments"):
        assert text in html
    assert "Arguments the tool runs with" in html
    assert "&quot;path&quot;: &quot;safe.py&quot;" in html and "&quot;path&quot;: &quot;a.py&quot;" in html
    assert '<div class="hitl-diff-added"><span>+</span>  &quot;path&quot;: &quot;safe.py&quot;' in html

    before = refreshed(request)
    for decision in ("approve", "reject", "confirm_edit"):
        posted = client.post(change_url(request), {"_decision": decision, "arguments": "{}"}, follow=True)
        assert "Nothing was saved: call-1 is already approved with edits by olga." in posted.content.decode()
    client.post(change_url(request), {"status": "approved", "comment": "changed", "_save": "Save"})
    after = refreshed(request)
    assert (after.status, after.comment, after.modified_args, after.decided_by, after.decided_at) == (
        before.status,
        before.comment,
        before.modified_args,
        before.decided_by,
        before.decided_at,
    )


@pytest.mark.django_db
def test_rejected_request_shows_that_the_tool_does_not_run(root, bob):
    request = ask("call-1")
    approval_decide(call_id=request.call_id, user=bob, decision="REJECT", comment="nope", channel="page")

    html = client_for(root).get(change_url(request)).content.decode()

    assert "the tool does not run" in html
    assert "nope" in html and "approval page" in html and "bob" in html


# Who may do what


@pytest.mark.django_db
def test_a_user_without_the_decide_permission_cannot_decide(viewer):
    request = ask("call-1")
    client = client_for(viewer)

    listed = client.get(CHANGELIST)
    page = client.get(change_url(request))

    assert listed.status_code == 200 and page.status_code == 200  # may look
    assert "approve_selected" not in listed.content.decode()
    assert page.context["decide_form"] is None and 'name="_decision"' not in page.content.decode()
    assert "Deciding needs the operator role" in page.content.decode()

    for decision in ("approve", "reject", "edit", "confirm_edit"):
        response = client.post(change_url(request), {"_decision": decision, "arguments": '{"path": "b.py"}'})
        assert response.status_code == 403
    client.post(CHANGELIST, {"action": "approve_selected", "index": 0, "_selected_action": [request.pk]})
    client.post(
        CHANGELIST,
        {"action": "reject_selected", "post": "yes", "_selected_action": [request.pk], "comment": "x"},
    )

    request = refreshed(request)
    assert (request.status, request.decided_by) == ("pending", None)


@pytest.mark.django_db
def test_staff_without_any_permission_sees_nothing(django_user_model):
    request = ask("call-1")
    client = client_for(django_user_model.objects.create_user("sam", password="pw", is_staff=True))

    assert client.get(CHANGELIST).status_code == 403
    assert client.get(change_url(request)).status_code == 403
    assert client.post(change_url(request), {"_decision": "approve"}).status_code == 403
    assert refreshed(request).status == "pending"


@pytest.mark.django_db
def test_nobody_adds_or_deletes_requests(root):
    request = ask("call-1")
    client = client_for(root)

    assert client.get(reverse("admin:hitl_approvalrequest_add")).status_code == 403
    assert client.post(reverse("admin:hitl_approvalrequest_add"), {"call_id": "x"}).status_code == 403
    delete_url = reverse("admin:hitl_approvalrequest_delete", args=[request.pk])
    assert client.get(delete_url).status_code == 403
    assert client.post(delete_url, {"post": "yes"}).status_code == 403
    client.post(CHANGELIST, {"action": "delete_selected", "index": 0, "_selected_action": [request.pk]})
    assert ApprovalRequest.objects.filter(pk=request.pk).exists()


# With the event store: the decision is the service's, event and audit included


@pytest.mark.django_db(transaction=True)
def test_an_admin_decision_publishes_the_decision_event(operator):
    request = ask("call-1")

    client_for(operator).post(change_url(request), {"_decision": "reject", "comment": "no"})
    event_bus.drain_sync(timeout=10)
    event_store.flush_sync(timeout=10)

    stored = StoredEvent.objects.get(event_type="hitl_decision_made", data__call_id="call-1")
    assert stored.actor == "olga"
    assert stored.data["decision"] == "REJECT" and stored.data["channel"] == "admin"
    assert stored.data["comment"] == "no"


@pytest.mark.django_db
def test_deciding_needs_the_csrf_token(operator):
    request = ask("call-1")
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)

    refused = client.post(change_url(request), {"_decision": "approve"})
    page = client.get(change_url(request))
    token = page.context["csrf_token"]
    accepted = client.post(change_url(request), {"_decision": "approve", "csrfmiddlewaretoken": str(token)})

    assert refused.status_code == 403
    assert accepted.status_code == 302
    assert refreshed(request).status == "approved"


@pytest.mark.django_db
def test_a_decision_message_keeps_the_tools_name_as_written(operator):
    request = ask("call-lower", tool="execute_command")
    response = client_for(operator).post(change_url(request), {"_decision": "approve"}, follow=True)
    html = response.content.decode()
    assert "execute_command (call-lower): approved." in html
    assert "Execute_command" not in html  # Django's admin template would capitalise the message
