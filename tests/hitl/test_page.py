"""The approval page (/hitl/): who may see it, what its first paint shows, and the decide endpoint its
buttons post to (JSON, CSRF, channel "page", the errors an operator reads)."""

import json
import re
from datetime import timedelta
from html.parser import HTMLParser

import pytest
from django.contrib.auth.models import Group, Permission
from django.contrib.staticfiles import finders
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.roles import AUDITORS, OPERATORS
from accounts.services import roles_setup
from hitl.conf import register_tool_schema, unregister_tool_schema
from hitl.models import ApprovalRequest
from hitl.services import approval_decide, approval_request

pytestmark = pytest.mark.django_db

PAGE = "/hitl/"
ARGS = {"path": "a.py", "content": "print('hi')", "mode": "w"}


# A small DOM of the response, to look at elements the way the browser tests do.


class Element:
    def __init__(self, tag: str, attrs: dict[str, str], parent: "Element | None") -> None:
        self.tag = tag
        self.attrs = attrs
        self.parent = parent
        self.children: list[Element | str] = []

    @property
    def text(self) -> str:
        return "".join(child if isinstance(child, str) else child.text for child in self.children)

    def iter(self):
        for child in self.children:
            if isinstance(child, Element):
                yield child
                yield from child.iter()

    def find_all(self, testid: str | None = None, **attrs: str) -> list["Element"]:
        wanted = dict(attrs)
        if testid is not None:
            wanted["data-testid"] = testid
        return [
            element
            for element in self.iter()
            if all(
                element.attrs.get(key.replace("_", "-") if key != "data-testid" else key) == value
                for key, value in wanted.items()
            )
        ]

    def find(self, testid: str | None = None, **attrs: str) -> "Element":
        found = self.find_all(testid, **attrs)
        assert len(found) == 1, f"{len(found)} elements match {testid} {attrs}"
        return found[0]


VOID = {"meta", "link", "input", "br", "img", "hr", "source", "area", "base", "col", "wbr"}


class TreeBuilder(HTMLParser):
    """The document as Elements; what is inside <template> is left out, as the browser's DOM does."""

    def __init__(self) -> None:
        super().__init__()
        self.root = Element("#document", {}, None)
        self.current = self.root
        self.in_template = 0

    def handle_starttag(self, tag, attrs):
        if tag == "template":
            self.in_template += 1
            return
        if self.in_template:
            return
        element = Element(tag, {k: v or "" for k, v in attrs}, self.current)
        self.current.children.append(element)
        if tag not in VOID:
            self.current = element

    def handle_endtag(self, tag):
        if tag == "template":
            self.in_template -= 1
            return
        if self.in_template or tag in VOID:
            return
        node: Element | None = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data):
        if not self.in_template:
            self.current.children.append(data)


def dom(response) -> Element:
    builder = TreeBuilder()
    builder.feed(response.content.decode())
    return builder.root


def json_config(response, element_id: str) -> dict:
    match = re.search(
        rf'<script id="{element_id}" type="application/json">(.*?)</script>', response.content.decode(), re.S
    )
    assert match, f"no {element_id} in the page"
    return json.loads(match.group(1))


# Fixtures


def ask(call_id: str, *, tool="write_file", agent="coder", arguments=None, timeout_s=600.0, **extra):
    request, created = approval_request(
        call_id=call_id,
        session_id="session-1",
        tool_name=tool,
        agent=agent,
        arguments=dict(ARGS) if arguments is None else arguments,
        reason="writes a file",
        timeout_s=timeout_s,
        **extra,
    )
    assert created
    return request


def client_for(user, **kwargs) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client


def staff_in(django_user_model, username: str, group: str):
    """A staff account (it signs in through the admin's login) in one of the roles' groups."""
    roles_setup()
    user = django_user_model.objects.create_user(username, password="pw", is_staff=True)
    user.groups.add(Group.objects.get(name=group))
    return user


@pytest.fixture
def operator(django_user_model):
    return staff_in(django_user_model, "olga", OPERATORS)


@pytest.fixture
def bob(django_user_model):
    return staff_in(django_user_model, "bob", OPERATORS)


@pytest.fixture
def auditor(django_user_model):
    return staff_in(django_user_model, "audrey", AUDITORS)


@pytest.fixture
def watcher(django_user_model):
    """May view approval requests but not decide them."""
    user = django_user_model.objects.create_user("walt", password="pw", is_staff=True)
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="hitl", codename="view_approvalrequest")
    )
    return user


@pytest.fixture
def schema():
    register_tool_schema(
        "write_file",
        {
            "type": "object",
            "properties": {
                "path": {"type": "string", "pattern": r"^[\w./-]+$"},
                "mode": {"enum": ["w", "a"]},
            },
            "required": ["path"],
        },
    )
    yield
    unregister_tool_schema("write_file")


def decide_url(call_id: str) -> str:
    return reverse("hitl:decide", args=[call_id])


def post_json(client: Client, call_id: str, body, **headers):
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post(decide_url(call_id), data=data, content_type="application/json", **headers)


# Who sees the page


def test_anonymous_users_are_sent_to_the_login_page():
    response = Client().get(PAGE)
    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/hitl/"


def test_signed_in_without_the_operator_role_is_forbidden(auditor):
    response = client_for(auditor).get(PAGE)
    assert response.status_code == 403
    text = dom(response).text
    assert "needs the operator role" in text
    assert "audrey" in text


def test_operator_sees_the_pending_cards_server_rendered(operator):
    ask("c-late", timeout_s=900)
    ask("c-soon", tool="send_email", agent="mailer", arguments={"to": "ä@example.com"}, timeout_s=20)
    decided = ask("c-done")
    approval_decide(call_id=decided.call_id, user=operator, decision="APPROVE")

    response = client_for(operator).get(PAGE)

    assert response.status_code == 200
    page = dom(response)
    cards = page.find_all("request")
    # Pending only, soonest deadline first.
    assert [card.attrs["data-call-id"] for card in cards] == ["c-soon", "c-late"]
    assert page.find("pending-count").text == "2"
    assert "hidden" in page.find("empty").attrs
    assert page.find("live-status").text == "reconnecting"  # until the socket opens

    soon = cards[0]
    assert soon.find("tool").text == "send_email"
    assert soon.find("agent").text == "mailer"
    assert soon.find("reason").text == "writes a file"
    assert re.fullmatch(r"\d+s", soon.find("age").text)
    assert re.fullmatch(r"(1\d|20|\d)s", soon.find("time-left").text)
    assert "urgent" in soon.attrs["class"]  # 20 s left
    assert json.loads(soon.find("arguments").text) == {"to": "ä@example.com"}
    assert soon.find("arguments").text == '{\n  "to": "ä@example.com"\n}'  # pretty, not escaped
    for button in ("approve", "edit", "reject"):
        element = soon.find(button)
        assert element.tag == "button" and "disabled" not in element.attrs
    assert soon.find("approve").attrs["type"] == "submit"  # works without JavaScript too
    assert soon.find("args-editor").tag == "textarea"
    assert soon.find("reject-comment").tag == "textarea"
    assert "disabled" in soon.find("send-edit").attrs  # until valid, changed JSON is typed
    assert soon.find("error").text == "" and "hidden" in soon.find("error").attrs

    late = cards[1]
    assert re.fullmatch(r"1[45]m \d\ds", late.find("time-left").text)
    assert "urgent" not in late.attrs["class"] and "soon" not in late.attrs["class"]

    # The socket's settings and the first paint's data, for the page's script.
    config = json_config(response, "hitl-config")
    assert config["ws_path"] == "/ws/hitl/"
    assert config["may_decide"] is True
    assert [a["call_id"] for a in config["pending"]] == ["c-soon", "c-late"]
    assert config["links"]["decide"] == "/hitl/requests/__call_id__/decide/"


def test_empty_queue_says_so(operator):
    page = dom(client_for(operator).get(PAGE))
    assert page.find_all("request") == []
    assert page.find("pending-count").text == "0"
    assert "hidden" not in page.find("empty").attrs
    assert "Nothing is waiting" in page.find("empty").text


def test_a_viewer_without_the_decide_permission_sees_disabled_buttons(watcher):
    ask("c1")
    response = client_for(watcher).get(PAGE)
    assert response.status_code == 200
    card = dom(response).find("request", **{"data-call-id": "c1"})
    for button in ("approve", "edit", "reject"):
        assert "disabled" in card.find(button).attrs
    assert "deciding needs the operator role" in response.content.decode()


def test_the_page_escapes_what_agents_send(operator):
    ask("c1", tool="<script>alert(1)</script>", agent="<b>x</b>")
    body = client_for(operator).get(PAGE).content.decode()
    assert "<script>alert(1)</script>" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body


def test_the_page_is_usable_on_a_phone_and_loads_its_static_files(operator):
    response = client_for(operator).get(PAGE)
    page = dom(response)
    viewport = [m for m in page.iter() if m.tag == "meta" and m.attrs.get("name") == "viewport"]
    assert viewport and "width=device-width" in viewport[0].attrs["content"]
    assets = [e.attrs["src"] for e in page.iter() if e.tag == "script" and "src" in e.attrs]
    assets += [e.attrs["href"] for e in page.iter() if e.tag == "link" and e.attrs.get("rel") == "stylesheet"]
    assert "/static/hitl/approvals.js" in assets and "/static/events/live-socket.js" in assets
    for url in assets:
        assert url.startswith("/static/") and finders.find(url.removeprefix("/static/")), url
    links = {e.attrs["href"] for e in page.iter() if e.tag == "a" and "href" in e.attrs}
    assert {"/hitl/", "/events/live/", "/admin/"} <= links


# Deciding


def test_approve_records_the_operator_and_the_page_channel(operator):
    ask("c1")
    response = post_json(
        client_for(operator), "c1", {"decision": "APPROVE", "modified_args": None, "comment": ""}
    )
    assert response.status_code == 200, response.content
    approval = response.json()["request"]
    assert approval["call_id"] == "c1"
    assert approval["status"] == "approved"
    assert approval["channel"] == "page"
    assert approval["decided_by"] == "olga"
    stored = ApprovalRequest.objects.get(call_id="c1")
    assert (stored.status, stored.channel, stored.decided_by_username) == ("approved", "page", "olga")


def test_edit_keeps_the_proposed_and_the_edited_arguments(operator):
    ask("c1")
    edited = {"path": "b.py", "content": "print('bye')", "mode": "w"}
    response = post_json(
        client_for(operator), "c1", {"decision": "EDIT", "modified_args": edited, "comment": "other file"}
    )
    assert response.status_code == 200, response.content
    approval = response.json()["request"]
    assert approval["status"] == "edited"
    assert approval["arguments"] == ARGS
    assert approval["modified_args"] == edited
    assert approval["comment"] == "other file"
    assert approval["channel"] == "page"


def test_reject_with_a_comment(operator):
    ask("c1")
    response = post_json(client_for(operator), "c1", {"decision": "REJECT", "comment": "not that file"})
    assert response.status_code == 200, response.content
    approval = response.json()["request"]
    assert (approval["status"], approval["comment"], approval["channel"]) == (
        "rejected",
        "not that file",
        "page",
    )


def test_the_approver_is_the_signed_in_user_whatever_the_body_says(operator):
    ask("c1")
    response = post_json(client_for(operator), "c1", {"decision": "APPROVE", "decided_by": "mallory"})
    assert response.json()["request"]["decided_by"] == "olga"


def test_a_second_decision_is_a_conflict_naming_who_decided(operator, bob):
    ask("c1")
    assert post_json(client_for(bob), "c1", {"decision": "REJECT"}).status_code == 200
    response = post_json(client_for(operator), "c1", {"decision": "APPROVE"})
    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "already_decided"
    assert "already rejected" in body["detail"] and "bob" in body["detail"]
    assert ApprovalRequest.objects.get(call_id="c1").decided_by_username == "bob"


def test_an_expired_request_cannot_be_decided(operator):
    request = ask("c1")
    ApprovalRequest.objects.filter(pk=request.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = post_json(client_for(operator), "c1", {"decision": "APPROVE"})
    assert response.status_code == 409
    assert response.json()["code"] == "expired"
    assert "expired" in response.json()["detail"]


def test_an_unknown_request_is_404(operator):
    response = post_json(client_for(operator), "nope", {"decision": "APPROVE"})
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


@pytest.mark.parametrize(
    "body",
    [
        "{not json",
        "[1, 2]",
        '"APPROVE"',
        "",
        b"\xff\xfe{",
        '{"decision": "APPROVE", "decision": "REJECT"}',
        '{"decision": "EDIT", "modified_args": {"x": NaN}}',
        "[" * 100_000,
    ],
    ids=["broken", "array", "string", "empty", "bad-utf8", "duplicate-key", "nan", "deep"],
)
def test_a_body_that_is_not_a_json_object_is_400(operator, body):
    ask("c1")
    response = post_json(client_for(operator), "c1", body)
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "invalid_body"
    assert ApprovalRequest.objects.get(call_id="c1").status == "pending"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "decision"),
        ({"decision": "MAYBE"}, "decision"),
        ({"decision": ["APPROVE"]}, "decision"),
        ({"decision": "EDIT"}, "modified_args"),
        ({"decision": "EDIT", "modified_args": [1]}, "modified_args"),
        ({"decision": "APPROVE", "modified_args": {"a": 1}}, "modified_args"),
        ({"decision": "REJECT", "comment": 5}, "comment"),
    ],
)
def test_invalid_decisions_are_400_naming_the_field(operator, body, field):
    ask("c1")
    response = post_json(client_for(operator), "c1", body)
    assert response.status_code == 400, response.content
    assert response.json()["detail"].startswith(field)
    assert ApprovalRequest.objects.get(call_id="c1").status == "pending"


def test_an_edit_that_breaks_the_tool_schema_is_400_naming_the_field(operator, schema):
    ask("c1")
    response = post_json(
        client_for(operator), "c1", {"decision": "EDIT", "modified_args": {"path": "a b;rm", "mode": "w"}}
    )
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid"
    assert body["detail"].startswith("modified_args.path:")
    assert body["errors"][0]["field"] == "modified_args.path"
    assert ApprovalRequest.objects.get(call_id="c1").status == "pending"


def test_anonymous_and_non_operators_cannot_decide(auditor, watcher):
    ask("c1")
    anonymous = post_json(Client(), "c1", {"decision": "APPROVE"})
    assert anonymous.status_code == 401
    assert anonymous.json()["code"] == "not_authenticated"
    for user in (auditor, watcher):
        response = post_json(client_for(user), "c1", {"decision": "APPROVE"})
        assert response.status_code == 403
        assert response.json()["code"] == "permission_denied"
    assert ApprovalRequest.objects.get(call_id="c1").status == "pending"


def test_deciding_needs_the_csrf_token_of_the_page(operator):
    ask("c1")
    client = client_for(operator, enforce_csrf_checks=True)
    refused = post_json(client, "c1", {"decision": "APPROVE"})
    assert refused.status_code == 403
    assert ApprovalRequest.objects.get(call_id="c1").status == "pending"

    page = dom(client.get(PAGE))
    token = next(
        m.attrs["content"] for m in page.iter() if m.tag == "meta" and m.attrs.get("name") == "csrf-token"
    )
    accepted = post_json(client, "c1", {"decision": "APPROVE"}, HTTP_X_CSRFTOKEN=token)
    assert accepted.status_code == 200, accepted.content
    assert ApprovalRequest.objects.get(call_id="c1").status == "approved"


def test_only_post_decides(operator):
    ask("c1")
    assert client_for(operator).get(decide_url("c1")).status_code == 405


def test_the_form_fallback_approves_and_comes_back_with_a_message(operator):
    ask("c1")
    client = client_for(operator)
    response = client.post(decide_url("c1"), {"decision": "APPROVE"})
    assert response.status_code == 302 and response["Location"] == PAGE
    assert ApprovalRequest.objects.get(call_id="c1").channel == "page"
    shown = client.get(PAGE).content.decode()
    assert "write_file (c1): approved." in shown

    response = client.post(decide_url("c1"), {"decision": "APPROVE"})
    assert response.status_code == 302
    assert "already approved" in client.get(PAGE).content.decode()


def test_the_form_fallback_edit_checks_the_json(operator):
    ask("c1")
    client = client_for(operator)
    client.post(decide_url("c1"), {"decision": "EDIT", "modified_args": "{oops"})
    assert ApprovalRequest.objects.get(call_id="c1").status == "pending"
    assert "not valid JSON" in client.get(PAGE).content.decode()
    client.post(decide_url("c1"), {"decision": "EDIT", "modified_args": '{"path": "b.py"}'})
    stored = ApprovalRequest.objects.get(call_id="c1")
    assert (stored.status, stored.modified_args) == ("edited", {"path": "b.py"})


def test_the_form_fallback_asks_for_the_box_before_approving_a_high_risk_tool(operator, settings):
    settings.HITL_TOOL_RISK = {"write_*": "high"}
    ask("c1")
    client = client_for(operator)
    assert 'name="confirm" value="high_risk"' in client.get(PAGE).content.decode()

    response = client.post(decide_url("c1"), {"decision": "APPROVE"})
    assert response.status_code == 302
    assert ApprovalRequest.objects.get(call_id="c1").status == "pending"
    assert "write_file is a high-risk tool" in client.get(PAGE).content.decode()

    client.post(decide_url("c1"), {"decision": "APPROVE", "confirm": "high_risk"})
    assert ApprovalRequest.objects.get(call_id="c1").status == "approved"


def test_the_form_fallback_rejects_a_high_risk_tool_without_the_box(operator, settings):
    settings.HITL_TOOL_RISK = {"write_file": "high"}
    ask("c1")
    client_for(operator).post(decide_url("c1"), {"decision": "REJECT", "comment": "no"})
    assert ApprovalRequest.objects.get(call_id="c1").status == "rejected"


def test_anonymous_form_post_goes_to_the_login_page():
    response = Client().post(decide_url("c1"), {"decision": "APPROVE"})
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/?next=/hitl/")


@pytest.mark.django_db
def test_the_admin_links_to_the_pages_its_user_may_open(operator, auditor):
    page = client_for(operator).get(reverse("admin:index")).content.decode()
    assert 'href="/hitl/"' in page and 'href="/events/live/"' in page
    page = client_for(auditor).get(reverse("admin:index")).content.decode()
    assert 'href="/hitl/"' not in page and 'href="/events/live/"' in page
