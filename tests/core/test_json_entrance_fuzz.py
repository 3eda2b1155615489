"""Generated JSON thrown at every JSON entrance: deep nesting (to ~1,200 levels), wide objects, NULs and
lone surrogates in keys and values, integers of thousands of digits, floats, and values of the wrong
type in every field. Whatever comes in, the answer is a 2xx or a 4xx, never a 5xx; a WebSocket answers
an error frame and stays open; and every decided request keeps exactly one audit entry."""

from __future__ import annotations

import json
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accounts.roles import OPERATORS
from accounts.services import api_token_issue, roles_setup
from audit.models import AuditEntry
from eventbus_project.asgi import application
from hitl.models import ApprovalRequest, ApprovalStatus
from hitl.services import approval_request

pytestmark = pytest.mark.django_db(transaction=True)

FUZZ = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
    database=None,
)

# Strings: ordinary text, and the characters the stores cannot keep.
BAD_CHARACTERS = ["\x00", "\ud800", "\udfff", "a\udc00b", "\ufeff", "\u2028", " "]
texts = st.one_of(
    st.text(max_size=20),
    st.lists(st.one_of(st.characters(), st.sampled_from(BAD_CHARACTERS)), max_size=8).map("".join),
    st.sampled_from(["", " c1", "c1 ", "APPROVE", "EDIT", "REJECT", "pending", "reject", "x" * 300]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(texts, children, max_size=6),
    ),
    max_leaves=30,
)


def deep_text(levels: int, kind: str, leaf: str) -> str:
    """JSON text nested `levels` deep, written directly (no recursion anywhere)."""
    if kind == "list":
        return "[" * levels + leaf + "]" * levels
    return '{"k": ' * levels + leaf + "}" * levels


# A value as JSON text: most generated, some deep, wide, or with numbers json.dumps would not write.
value_texts = st.one_of(
    json_values.map(lambda v: json.dumps(v, ensure_ascii=True)),
    st.builds(
        deep_text,
        st.integers(1, 1200),
        st.sampled_from(["list", "object"]),
        st.sampled_from(["1", '"\\ud800"', "{}"]),
    ),
    st.integers(1, 3000).map(lambda n: "{" + ",".join(f'"k{i}": {i}' for i in range(n)) + "}"),
    st.sampled_from(
        ["9" * 5000, "-" + "9" * 4400, "1e400", "NaN", "-Infinity", "1.5e-400", '"\\u0000"', "{}"]
    ),
)


def body_of(fields: dict[str, list[str]]):
    """A JSON object body: for each field, a valid value's text or a generated one."""
    members = {name: st.one_of(st.sampled_from(choices), value_texts) for name, choices in fields.items()}

    def join(chosen: dict[str, str], keep: list[bool]) -> bytes:
        parts = [
            f"{json.dumps(name)}: {text}"
            for (name, text), kept in zip(chosen.items(), keep, strict=False)
            if kept
        ]
        return ("{" + ", ".join(parts) + "}").encode()

    objects = st.builds(
        join,
        st.fixed_dictionaries(members),
        st.lists(st.booleans(), min_size=len(fields), max_size=len(fields)),
    )
    return st.one_of(objects, objects, value_texts.map(str.encode), st.binary(max_size=40))


REQUEST_FIELDS = {
    "session_id": ['"s1"'],
    "call_id": ['"f1"', '"f2"', '"f3"'],
    "tool_name": ['"write_file"'],
    "arguments": ['{"path": "a.py"}', "{}"],
    "reason": ['"why"'],
    "agent": ['"coder"'],
    "timeout_s": ["600", "null"],
    "on_expire": ['"reject"', '"approve"'],
    "correlation_id": ['"corr-1"', "null"],
}
DECISION_FIELDS = {
    "decision": ['"APPROVE"', '"EDIT"', '"REJECT"'],
    "modified_args": ['{"path": "b.py"}', "null"],
    "comment": ['"ok"', '""'],
}
EVENT_FIELDS = {
    "event_type": ['"agent_switched"', '"tool_execution_requested"', '"hitl_decision_made"'],
    "session_id": ['"s1"'],
    "data": ['{"from_agent": "a", "to_agent": "b"}', "{}"],
    "event_id": ['"3f2b6a4e-58a3-4c53-9a8e-1d7c2b0f9e11"'],
    "timestamp": ['"2026-01-01T00:00:00Z"'],
    "correlation_id": ['"corr-1"'],
}
CALL_IDS = ["p1", "p2", "p3", "p4", "p5", "p6"]

# Query strings: the filters' names with generated values, percent-encoded as a client would send them.
QUERY_NAMES = [
    "session_id",
    "correlation_id",
    "event_type",
    "event_category",
    "since",
    "until",
    "after",
    "limit",
    "cursor",
    "actor",
    "status",
    "tool_name",
    "agent",
    "before",
    "format",
]
query_values = st.one_of(
    texts,
    st.sampled_from(["%00", "%ED%A0%80", "%FF", "99999999999999999999999", "-1", "1e3", " 5", "+5", "bogus"]),
)


def query_of(pairs: list[tuple[str, str]]) -> str:
    from urllib.parse import quote

    def encode(text: str) -> str:
        if text.startswith("%") and text.isascii():
            return text  # already percent-encoded bytes (a NUL, bad UTF-8); a generated "%\ud800" is not
        return quote(text.encode("utf-8", "surrogatepass"), safe="")

    return "&".join(f"{name}={encode(value)}" for name, value in pairs)


# People and requests


@pytest.fixture
def people(django_user_model):
    roles_setup()
    staff = django_user_model.objects.create_user("stella", password="pw", is_staff=True)
    staff.groups.add(Group.objects.get(name=OPERATORS))
    return {
        "agent": api_token_issue(username="bot", group="agents"),
        "operator": api_token_issue(username="olga", group="operators"),
        "auditor": api_token_issue(username="audrey", group="auditors"),
        "staff": staff,
    }


@pytest.fixture
def pending(people):
    for call_id in CALL_IDS:
        approval_request(
            call_id=call_id,
            session_id="s1",
            tool_name="write_file",
            arguments={"path": "a.py"},
            reason="writes a file",
            agent="coder",
            requested_by=people["agent"].user,
        )


def bearer(issued) -> dict[str, str]:
    return {"Authorization": f"Bearer {issued.token}"}


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    return client


def assert_no_5xx(response, sent: Any) -> None:
    assert response.status_code < 500, (response.status_code, repr(sent)[:300], response.content[:300])
    if response.status_code >= 400 and response.get("Content-Type", "").startswith("application/json"):
        body = response.json()
        assert body.get("code") and body.get("detail"), body


def assert_one_audit_entry_per_decision() -> None:
    decided = ApprovalRequest.objects.exclude(
        status__in=[ApprovalStatus.PENDING, ApprovalStatus.CANCELLED]
    ).count()
    audited = AuditEntry.objects.filter(event_type="hitl_decision_made").count()
    assert decided == audited, (decided, audited)


# REST bodies


def test_generated_bodies_never_make_a_5xx_on_post_events(people):
    client, headers = Client(), bearer(people["agent"])

    @FUZZ
    @given(body_of(EVENT_FIELDS))
    def post(body: bytes) -> None:
        assert_no_5xx(
            client.post("/api/events/", body, content_type="application/json", headers=headers), body
        )

    post()
    assert not AuditEntry.objects.filter(event_type="hitl_decision_made").exists()


def test_generated_bodies_never_make_a_5xx_on_approval_requests(people):
    client, headers = Client(), bearer(people["agent"])

    @FUZZ
    @given(body_of(REQUEST_FIELDS))
    def post(body: bytes) -> None:
        response = client.post("/api/hitl/requests/", body, content_type="application/json", headers=headers)
        assert_no_5xx(response, body)

    post()
    assert_one_audit_entry_per_decision()


def test_generated_decisions_never_make_a_5xx_and_each_keeps_its_audit_entry(people, pending):
    api, headers = Client(), bearer(people["operator"])
    page = signed_in(people["staff"])

    @FUZZ
    @given(st.sampled_from(CALL_IDS), body_of(DECISION_FIELDS), st.booleans())
    def decide(call_id: str, body: bytes, on_the_page: bool) -> None:
        if on_the_page:
            response = page.post(
                reverse("hitl:decide", args=[call_id]), body, content_type="application/json"
            )
        else:
            url = f"/api/hitl/requests/{call_id}/decision/"
            response = api.post(url, body, content_type="application/json", headers=headers)
        assert_no_5xx(response, body)

    decide()
    assert_one_audit_entry_per_decision()


def test_generated_admin_forms_never_make_a_5xx(people, pending):
    client = signed_in(people["staff"])
    urls = {
        r.call_id: reverse("admin:hitl_approvalrequest_change", args=[r.pk])
        for r in ApprovalRequest.objects.all()
    }

    @FUZZ
    @given(
        st.sampled_from(CALL_IDS),
        st.sampled_from(["approve", "reject", "edit", "confirm_edit", "back", "", "bogus"]),
        value_texts,
        st.text(max_size=30),
    )
    def submit(call_id: str, action: str, arguments: str, comment: str) -> None:
        form = {"_decision": action, "arguments": arguments, "comment": comment.replace("\x00", "")}
        # Surrogates cannot be form-encoded as text; their JSON escapes (in `arguments`) can.
        form = {k: v.encode("utf-8", "backslashreplace").decode("utf-8") for k, v in form.items()}
        assert_no_5xx(client.post(urls[call_id], form), form)

    submit()
    assert_one_audit_entry_per_decision()


# Query strings


@pytest.mark.parametrize(
    ("url", "who"),
    [("/api/events/", "auditor"), ("/api/audit/", "auditor"), ("/api/hitl/requests/", "operator")],
)
def test_generated_query_strings_never_make_a_5xx(people, url, who):
    client, headers = Client(), bearer(people[who])

    @settings(FUZZ, max_examples=40)
    @given(st.lists(st.tuples(st.sampled_from(QUERY_NAMES), query_values), min_size=1, max_size=4))
    def get(pairs: list[tuple[str, str]]) -> None:
        query = query_of(pairs)
        assert_no_5xx(client.get(f"{url}?{query}", headers=headers), query)

    get()


# WebSocket frames


def frames():
    decide = body_of(
        {"action": ['"decide"', '"ping"', '"dance"'], **DECISION_FIELDS, "call_id": ['"p1"', '"p2"']}
    )
    as_text = st.one_of(decide, value_texts.map(str.encode)).map(lambda raw: raw.decode("utf-8", "replace"))
    return as_text.map(lambda text: text or " ")  # an empty frame is no frame


async def _one_frame(token: str, frame: str) -> None:
    ws = WebsocketCommunicator(application, f"/ws/hitl/?token={token}")
    connected, _ = await ws.connect()
    assert connected
    try:
        assert json.loads(await ws.receive_from(5))["type"] == "snapshot"
        await ws.send_to(text_data=frame)
        await ws.send_to(text_data='{"action": "ping"}')
        replies = []
        while True:
            message = json.loads(await ws.receive_from(10))
            if message["type"] == "pong":
                break
            replies.append(message)
        answers = [m for m in replies if m["type"] in ("error", "decided", "pong")]
        assert answers, replies
        for answer in answers:
            if answer["type"] == "error":
                assert answer["code"] != "server_error" and answer["detail"], answer
    finally:
        await ws.disconnect()


def test_generated_frames_get_an_answer_and_the_socket_stays_open(people, pending):
    token = people["operator"].token

    @settings(FUZZ, max_examples=20)
    @given(frames())
    def send(frame: str) -> None:
        async_to_sync(_one_frame)(token, frame)

    send()
    assert_one_audit_entry_per_decision()
