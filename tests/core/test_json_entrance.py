"""The one entrance for JSON (CONTRACT.md, "The trust boundary"): every surface that takes JSON (REST
bodies, query values, the approval page, the admin, WebSocket frames) refuses the same input with a 4xx
naming the field (an error frame on a socket, which stays open), and nothing is ever a 500."""

from __future__ import annotations

import json
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Group
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse

from accounts.roles import OPERATORS
from accounts.services import api_token_issue, roles_setup
from eventbus_project.asgi import application
from hitl.models import ApprovalRequest
from hitl.services import approval_request

pytestmark = pytest.mark.django_db(transaction=True)

SURROGATE = b'"\\ud800"'  # a lone surrogate as JSON text writes it (json.dumps, ensure_ascii=True)


def deep(levels: int, leaf: Any = 1) -> str:
    """JSON text of objects nested `levels` deep: {"a": {"a": ... leaf ...}}."""
    return '{"a": ' * levels + json.dumps(leaf) + "}" * levels


def deep_object(levels: int) -> Any:
    """`levels` nested objects; built without recursion, so any depth works."""
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


# People


@pytest.fixture
def agent():
    return api_token_issue(username="bot", group="agents")


@pytest.fixture
def operator():
    return api_token_issue(username="olga", group="operators")


@pytest.fixture
def auditor():
    return api_token_issue(username="audrey", group="auditors")


@pytest.fixture
def staff_operator(django_user_model):
    """An operator who signs in to the page and the admin."""
    roles_setup()
    user = django_user_model.objects.create_user("stella", password="pw", is_staff=True)
    user.groups.add(Group.objects.get(name=OPERATORS))
    return user


def bearer(issued) -> dict[str, str]:
    return {"Authorization": f"Bearer {issued.token}"}


def signed_in(user) -> Client:
    client = Client()
    # ModelBackend named: the sign-in lock-out backend listed first only authenticates, it loads nobody.
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    return client


def ask(agent, call_id: str = "c1", **extra) -> ApprovalRequest:
    request, created = approval_request(
        call_id=call_id,
        session_id="s1",
        tool_name="write_file",
        arguments={"path": "a.py"},
        reason="writes a file",
        agent="coder",
        requested_by=agent.user,
        **extra,
    )
    assert created
    return request


def status_of(call_id: str = "c1") -> str:
    return ApprovalRequest.objects.get(call_id=call_id).status


def assert_refused(response, field: str, *, code: str = "invalid", status: int = 400) -> dict:
    """A 4xx in the API's error shape whose errors name `field`."""
    assert response.status_code == status, response.content[:500]
    body = response.json()
    assert body["code"] == code, body
    assert body["detail"]
    assert field in [error["field"] for error in body["errors"]], body
    return body


def post_raw(client: Client, url: str, body: bytes, **headers: str):
    return client.post(url, data=body, content_type="application/json", headers=headers)


# Query strings and paths


LIST_FILTERS = (
    [
        ("/api/events/", "auditor", name)
        for name in (
            "session_id",
            "correlation_id",
            "event_type",
            "event_category",
            "since",
            "until",
            "after",
            "limit",
            "cursor",
        )
    ]
    + [
        ("/api/audit/", "auditor", name)
        for name in (
            "actor",
            "session_id",
            "correlation_id",
            "event_type",
            "event_category",
            "since",
            "after",
        )
    ]
    + [("/api/audit/export/", "auditor", name) for name in ("session_id", "format", "audit_only")]
    + [
        ("/api/hitl/requests/", "operator", name)
        for name in ("status", "tool_name", "agent", "session_id", "limit", "before")
    ]
)


@pytest.mark.parametrize(("url", "who", "name"), LIST_FILTERS, ids=lambda v: str(v))
def test_a_nul_in_a_filter_value_is_a_400_naming_it(url, who, name, request):
    issued = request.getfixturevalue(who)
    for value in ("%00", "a%00b", "%00%00"):
        response = Client().get(f"{url}?{name}={value}", headers=bearer(issued))
        assert_refused(response, name)


def test_a_nul_in_a_parameter_name_is_a_400(auditor):
    response = Client().get("/api/events/?sess%00ion_id=x", headers=bearer(auditor))
    assert_refused(response, "query")


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("get", "/api/hitl/requests/a%00b/"),
        ("get", "/api/hitl/requests/a%00b/?wait=1"),
        ("post", "/api/hitl/requests/a%00b/decision/"),
        ("post", "/api/hitl/requests/a%00b/cancel/"),
        ("get", "/api/events/a%00b/"),
    ],
)
def test_a_nul_in_a_call_id_in_the_path_is_a_404_naming_the_path(operator, method, url):
    body = json.dumps({"decision": "APPROVE"}) if method == "post" else None
    kwargs: dict[str, Any] = {"headers": bearer(operator)}
    if body is not None:
        kwargs.update(data=body, content_type="application/json")
    response = getattr(Client(), method)(url, **kwargs)
    assert_refused(response, "path", code="not_found", status=404)


def test_a_nul_in_the_page_and_admin_urls_is_a_4xx_not_a_500(agent, staff_operator):
    approval = ask(agent)
    client = signed_in(staff_operator)
    response = client.post("/hitl/requests/a%00b/decide/", {"decision": "APPROVE"})
    assert_refused(response, "path", code="not_found", status=404)
    for response, name in (
        (client.get("/admin/hitl/approvalrequest/?q=%00"), "q"),
        (client.get("/admin/hitl/approvalrequest/?tool_name=a%00"), "tool_name"),
        (client.get(f"/admin/hitl/approvalrequest/{approval.pk}/change/?x=%00"), "x"),
    ):
        assert_refused(response, name)
    assert status_of() == "pending"


def test_an_unknown_status_is_a_400_naming_the_values_there_are(operator):
    body = assert_refused(
        Client().get("/api/hitl/requests/?status=bogus", headers=bearer(operator)), "status"
    )
    for value in ("pending", "approved", "edited", "rejected", "expired", "cancelled"):
        assert value in body["detail"]
    # Exactly as written: no other case, no spaces around it.
    for value in ("PENDING", "%20pending", "pending%20"):
        assert_refused(
            Client().get(f"/api/hitl/requests/?status={value}", headers=bearer(operator)), "status"
        )
    assert Client().get("/api/hitl/requests/?status=pending", headers=bearer(operator)).status_code == 200


def test_an_unknown_event_category_is_a_400_naming_the_values_there_are(auditor):
    for url in ("/api/events/", "/api/audit/"):
        response = Client().get(f"{url}?event_category=bogus", headers=bearer(auditor))
        body = assert_refused(response, "event_category")
        assert "agent" in body["detail"] and "'bogus'" in body["detail"]


@pytest.mark.parametrize(
    ("url", "who", "name", "value"),
    [
        ("/api/hitl/requests/", "operator", "limit", "%205"),
        ("/api/hitl/requests/", "operator", "limit", "+5"),
        ("/api/hitl/requests/", "operator", "before", "5_0"),
        ("/api/hitl/requests/", "operator", "before", "99999999999999999999"),
        ("/api/hitl/requests/", "operator", "session_id", "%20s1"),
        ("/api/events/", "auditor", "after", "%205"),
        ("/api/events/", "auditor", "after", "5.0"),
        ("/api/events/", "auditor", "session_id", "s1%20"),
        ("/api/audit/", "auditor", "actor", "%20olga"),
    ],
)
def test_a_padded_or_disguised_query_value_is_a_400_naming_it(url, who, name, value, request):
    issued = request.getfixturevalue(who)
    assert_refused(Client().get(f"{url}?{name}={value}", headers=bearer(issued)), name)


def test_a_wait_that_is_not_plain_seconds_is_a_400(agent):
    ask(agent)
    for value in ("1e1", "nan", "%201", "inf"):
        response = Client().get(f"/api/hitl/requests/c1/?wait={value}", headers=bearer(agent))
        assert_refused(response, "wait")


# REST bodies: the strict parser, then strict fields


REQUEST = {"session_id": "s1", "call_id": "c9", "tool_name": "write_file", "arguments": {"path": "a.py"}}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"session_id": "s1", "call_id": "c9", "tool_name": "t", "arguments": {"x": NaN}}', "body"),
        (b'{"session_id": "s1", "session_id": "s2", "call_id": "c9", "tool_name": "t"}', "body"),
        (b"{not json", "body"),
        (b"\xff\xfe{}", "body"),
        (b"[" * 5000 + b"]" * 5000, "[0]"),
        (b'{"session_id": "s1", "call_id": "c9", "tool_name": "t", "arguments": {"a\\u0000": 1}}', None),
        (
            b'{"session_id": "s1", "call_id": "c9", "tool_name": "t", "arguments": {"x": "\\u0000"}}',
            "arguments.x",
        ),
        (b'{"session_id": "s1", "call_id": "c9", "tool_name": "t", "reason": ' + SURROGATE + b"}", "reason"),
        (b'{"session_id": ' + SURROGATE + b', "call_id": "c9", "tool_name": "t"}', "session_id"),
        (
            b'{"session_id": "s1", "call_id": "c9", "tool_name": "t", "arguments": {"n": 1e999}}',
            "arguments.n",
        ),
        (
            b'{"session_id": "s1", "call_id": "c9", "tool_name": "t", "arguments": {"n": '
            + b"9" * 5000
            + b"}}",
            "body",
        ),
        (b"[1, 2]", "body"),
        (b'"a string"', "body"),
        (b"null", "body"),
    ],
    ids=[
        "nan",
        "duplicate-key",
        "broken",
        "bad-utf8",
        "deep-array",
        "nul-in-key",
        "nul-in-value",
        "surrogate-reason",
        "surrogate-id",
        "infinity",
        "huge-integer",
        "array",
        "string",
        "null",
    ],
)
def test_every_rest_body_goes_through_the_strict_parser(agent, body, field):
    response = post_raw(Client(), "/api/hitl/requests/", body, **bearer(agent))
    assert response.status_code == 400, response.content[:300]
    answer = response.json()
    assert answer["code"] == "invalid" and answer["errors"], answer
    if field is not None:
        assert answer["errors"][0]["field"] == field, answer
    else:
        assert answer["errors"][0]["field"].startswith("arguments."), answer
    assert not ApprovalRequest.objects.exists()


@pytest.mark.parametrize("levels", [65, 900, 1200])
def test_deep_arguments_are_a_400_naming_arguments(agent, levels):
    body = '{"session_id": "s1", "call_id": "c9", "tool_name": "t", "arguments": ' + deep(levels) + "}"
    assert_refused(post_raw(Client(), "/api/hitl/requests/", body.encode(), **bearer(agent)), "arguments")
    assert not ApprovalRequest.objects.exists()


def test_arguments_just_inside_the_depth_limit_are_taken(agent):
    # The body is one level around the arguments: 63 levels inside it make a body of 64.
    body = {**REQUEST, "arguments": deep_object(62)}
    response = post_raw(Client(), "/api/hitl/requests/", json.dumps(body).encode(), **bearer(agent))
    assert response.status_code == 201, response.content[:300]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"timeout_s": True}, "timeout_s"),
        ({"timeout_s": "30"}, "timeout_s"),
        ({"timeout_s": 10**400}, "timeout_s"),
        ({"call_id": " a"}, "call_id"),
        ({"call_id": "a "}, "call_id"),
        ({"call_id": 5}, "call_id"),
        ({"session_id": 5}, "session_id"),
        ({"session_id": True}, "session_id"),
        ({"session_id": ["s1"]}, "session_id"),
        ({"tool_name": {"x": 1}}, "tool_name"),
        ({"agent": 1.5}, "agent"),
        ({"reason": False}, "reason"),
        ({"correlation_id": 7}, "correlation_id"),
        ({"arguments": []}, "arguments"),
        ({"arguments": "{}"}, "arguments"),
        ({"arguments": None}, "arguments"),
        ({"on_expire": 1}, "on_expire"),
        ({"on_expire": "APPROVE"}, "on_expire"),
    ],
    ids=lambda value: json.dumps(value) if isinstance(value, dict) else str(value),
)
def test_an_approval_request_takes_no_value_of_another_type(agent, change, field):
    body = json.dumps({**REQUEST, **change}).encode()
    assert_refused(post_raw(Client(), "/api/hitl/requests/", body, **bearer(agent)), field)
    assert not ApprovalRequest.objects.exists()


def test_an_approval_request_as_the_contract_writes_it_is_taken(agent):
    body = {**REQUEST, "timeout_s": 30, "on_expire": "reject", "correlation_id": None, "agent": "coder"}
    response = post_raw(Client(), "/api/hitl/requests/", json.dumps(body).encode(), **bearer(agent))
    assert response.status_code == 201, response.content[:300]
    assert response.json()["call_id"] == "c9"


def test_arguments_over_the_size_limit_are_refused_naming_the_field(agent, operator, settings):
    settings.HITL_MAX_ARGUMENTS_BYTES = 1000
    big = {"text": "x" * 1000}
    body = json.dumps({**REQUEST, "arguments": big}).encode()
    answer = assert_refused(
        post_raw(Client(), "/api/hitl/requests/", body, **bearer(agent)), "arguments", code="too_large"
    )
    assert "1000" in answer["detail"]
    ask(agent)
    decision = json.dumps({"decision": "EDIT", "modified_args": big}).encode()
    response = post_raw(Client(), "/api/hitl/requests/c1/decision/", decision, **bearer(operator))
    assert_refused(response, "modified_args", code="too_large")
    assert status_of() == "pending"


def test_the_size_limit_is_64_kib_by_default(agent):
    body = json.dumps({**REQUEST, "arguments": {"text": "x" * (64 * 1024)}}).encode()
    assert_refused(
        post_raw(Client(), "/api/hitl/requests/", body, **bearer(agent)), "arguments", code="too_large"
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"decision": True}, "decision"),
        ({"decision": "approve"}, "decision"),
        ({"decision": "APPROVE", "comment": 5}, "comment"),
        ({"decision": "APPROVE", "comment": ["a"]}, "comment"),
        ({"decision": "EDIT", "modified_args": [1]}, "modified_args"),
        ({"decision": "EDIT", "modified_args": "{}"}, "modified_args"),
        ({"decision": "REJECT", "comment": "x" * 10_001}, "comment"),
    ],
    ids=lambda value: json.dumps(value)[:40] if isinstance(value, dict) else str(value),
)
def test_a_decision_takes_no_value_of_another_type(agent, operator, body, field):
    ask(agent)
    response = post_raw(
        Client(), "/api/hitl/requests/c1/decision/", json.dumps(body).encode(), **bearer(operator)
    )
    assert_refused(response, field)
    assert status_of() == "pending"


# The decision endpoints: deep modified_args, a lone surrogate in the comment


@pytest.mark.parametrize("levels", [65, 900])
def test_deep_modified_args_are_refused_on_every_decision_surface(agent, operator, staff_operator, levels):
    ask(agent)
    body = ('{"decision": "EDIT", "modified_args": ' + deep(levels) + "}").encode()
    # REST
    response = post_raw(Client(), "/api/hitl/requests/c1/decision/", body, **bearer(operator))
    assert_refused(response, "modified_args")
    # The page's JSON post
    page = signed_in(staff_operator)
    assert_refused(post_raw(page, reverse("hitl:decide", args=["c1"]), body), "modified_args")
    # The page's form fallback (modified_args as text): refused, with the field in the message
    response = page.post(
        reverse("hitl:decide", args=["c1"]), {"decision": "EDIT", "modified_args": deep(levels)}
    )
    assert response.status_code == 302
    assert any("modified_args" in str(m) and "deeper" in str(m) for m in get_messages(response.wsgi_request))
    # The admin's edit form: the error on the arguments field, nothing saved
    approval = ApprovalRequest.objects.get(call_id="c1")
    url = reverse("admin:hitl_approvalrequest_change", args=[approval.pk])
    for action in ("edit", "confirm_edit"):
        response = page.post(url, {"_decision": action, "arguments": deep(levels)})
        assert response.status_code == 200
        assert "nests deeper than 64 levels" in " ".join(response.context["decide_form"].errors["arguments"])
    assert status_of() == "pending"


def test_a_lone_surrogate_in_a_comment_is_refused_on_every_decision_surface(agent, operator, staff_operator):
    ask(agent)
    body = b'{"decision": "REJECT", "comment": ' + SURROGATE + b"}"
    assert_refused(post_raw(Client(), "/api/hitl/requests/c1/decision/", body, **bearer(operator)), "comment")
    page = signed_in(staff_operator)
    assert_refused(post_raw(page, reverse("hitl:decide", args=["c1"]), body), "comment")
    # A form post whose bytes are a lone surrogate (Django would make it U+FFFD): refused, not changed.
    form = b"decision=REJECT&comment=%ED%A0%80"
    response = page.post(
        reverse("hitl:decide", args=["c1"]), data=form, content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 302
    assert any("comment" in str(m) for m in get_messages(response.wsgi_request))
    approval = ApprovalRequest.objects.get(call_id="c1")
    url = reverse("admin:hitl_approvalrequest_change", args=[approval.pk])
    response = page.post(
        url,
        data=b"_decision=reject&arguments=&comment=%ED%A0%80",
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 200
    assert response.context["decide_form"].errors["comment"]
    # Escaped in the admin's arguments (JSON text): refused on the arguments field.
    response = page.post(url, {"_decision": "edit", "arguments": '{"path": "\\ud800"}'})
    assert "lone surrogate" in " ".join(response.context["decide_form"].errors["arguments"])
    assert status_of() == "pending"


def test_a_nul_in_a_comment_is_refused(agent, operator, staff_operator):
    ask(agent)
    body = json.dumps({"decision": "REJECT", "comment": "a\x00b"}).encode()
    assert_refused(post_raw(Client(), "/api/hitl/requests/c1/decision/", body, **bearer(operator)), "comment")
    assert_refused(post_raw(signed_in(staff_operator), reverse("hitl:decide", args=["c1"]), body), "comment")
    assert status_of() == "pending"


def test_the_page_still_decides_what_is_valid(agent, staff_operator):
    ask(agent)
    body = json.dumps({"decision": "EDIT", "modified_args": {"path": "b.py"}, "comment": "é ok"}).encode()
    response = post_raw(signed_in(staff_operator), reverse("hitl:decide", args=["c1"]), body)
    assert response.status_code == 200, response.content
    assert response.json()["request"]["status"] == "edited"


# WebSocket frames


async def open_queue(token: str) -> WebsocketCommunicator:
    ws = WebsocketCommunicator(application, f"/ws/hitl/?token={token}")
    connected, _ = await ws.connect()
    assert connected
    assert json.loads(await ws.receive_from(5))["type"] == "snapshot"
    return ws


async def reply_to_me(ws, timeout: float = 5.0) -> dict:
    while True:
        message = json.loads(await ws.receive_from(timeout))
        if message["type"] not in ("snapshot", "request", "decision", "expired"):
            return message


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        (
            '{"action": "decide", "call_id": "c1", "decision": "EDIT", "modified_args": ' + deep(65) + "}",
            "modified_args",
        ),
        (
            '{"action": "decide", "call_id": "c1", "decision": "EDIT", "modified_args": ' + deep(900) + "}",
            "modified_args",
        ),
        ("[" * 1200 + "]" * 1200, "[0]"),
        ('{"action": "decide", "call_id": "c1", "decision": "REJECT", "comment": "\\ud800"}', "comment"),
        ('{"action": "decide", "call_id": "c1", "decision": "REJECT", "comment": "a\\u0000"}', "comment"),
        ('{"action": "decide", "call_id": "c\\u0000", "decision": "REJECT"}', "call_id"),
        ('{"action": "decide", "call_id": "c1", "decision": "EDIT", "modified_args": {"\\udc00": 1}}', None),
        ('{"action": "decide", "call_id": "c1", "decision": "REJECT", "comment": NaN}', "message"),
        ('{"action": "decide", "action": "ping"}', "message"),
    ],
    ids=[
        "deep-65",
        "deep-900",
        "deep-array",
        "surrogate",
        "nul",
        "nul-call-id",
        "surrogate-key",
        "nan",
        "dup",
    ],
)
async def test_a_bad_frame_gets_an_error_frame_and_the_socket_stays_open(agent, operator, frame, field):
    await database_sync_to_async(ask)(agent)
    ws = await open_queue(operator.token)
    await ws.send_to(text_data=frame)
    reply = await reply_to_me(ws)
    assert reply["type"] == "error" and reply["code"] in ("invalid", "invalid_json"), reply
    assert reply["detail"]
    if field is not None:
        assert reply["errors"][0]["field"] == field, reply
    await ws.send_to(text_data='{"action": "ping"}')
    assert await reply_to_me(ws) == {"type": "pong"}
    await ws.disconnect()
    assert await database_sync_to_async(status_of)() == "pending"


async def test_frames_that_are_not_objects_or_too_large_get_an_error_frame(operator):
    ws = await open_queue(operator.token)
    for frame in (
        "[1, 2]",
        '"decide"',
        "null",
        "x" * 70_000,
        '{"action": "decide", "c": "' + "x" * 70_000 + '"}',
    ):
        await ws.send_to(text_data=frame)
        reply = await reply_to_me(ws)
        assert reply["type"] == "error" and reply["detail"], reply
    await ws.send_to(bytes_data=b"\x00")
    assert (await reply_to_me(ws))["type"] == "error"
    await ws.send_to(text_data='{"action": "ping"}')
    assert await reply_to_me(ws) == {"type": "pong"}
    await ws.disconnect()


async def test_a_bad_frame_on_the_events_feed_gets_an_error_frame(auditor):
    ws = WebsocketCommunicator(application, f"/ws/events/?token={auditor.token}")
    connected, _ = await ws.connect()
    assert connected
    assert json.loads(await ws.receive_from(5))["type"] == "caught_up"
    for frame in ('{"action": "resume", "after": ' + deep(900) + "}", '{"action": "resume", "x": "\\ud800"}'):
        await ws.send_to(text_data=frame)
        reply = json.loads(await ws.receive_from(5))
        assert reply["type"] == "error" and reply["code"] == "invalid", reply
    await ws.send_to(text_data='{"action": "ping"}')
    assert json.loads(await ws.receive_from(5)) == {"type": "pong"}
    await ws.disconnect()
