"""API tokens (Bearer authentication, digests only, revocation) and the roles with their commands."""

import hashlib
import json
from datetime import timedelta
from io import StringIO

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.management import CommandError, call_command
from django.test import AsyncClient
from django.utils import timezone
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.test import APIRequestFactory

from accounts.auth import BearerTokenAuthentication
from accounts.models import ApiToken
from accounts.roles import roles
from accounts.services import api_token_create, api_token_issue, api_token_revoke, roles_setup
from core.errors import ApplicationError

EVENT = {"event_type": "session_created", "session_id": "tokens-test"}


@pytest.fixture
def make_token():
    """A function making a token for a (new) user, optionally in a group: returns (user, raw token)."""

    def make(username: str, group: str | None = None) -> tuple:
        issued = api_token_issue(username=username, group=group)
        return issued.user, issued.token

    return make


async def post_event(token: str | None = None, headers: dict | None = None):
    headers = dict(headers or {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return await AsyncClient().post(
        "/api/events/", json.dumps(EVENT), content_type="application/json", headers=headers
    )


def revoke(raw: str) -> None:
    api_token_revoke(token=ApiToken.objects.get(prefix=raw[:12]))


def permission_names(group: Group) -> set[str]:
    return {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.all()}


# Tokens


@pytest.mark.django_db
def test_tokens_are_stored_only_as_digests(make_token):
    user, raw = make_token("agent-digest")
    assert raw.startswith("ebt_") and len(raw) > 40
    token = ApiToken.objects.get(user=user)
    assert token.key_hash == hashlib.sha256(raw.encode()).hexdigest()
    assert token.prefix == raw[:12]
    stored = [str(value) for value in ApiToken.objects.values_list().get(pk=token.pk)]
    assert not any(raw in value for value in stored)
    assert api_token_create(user=user) != raw  # each call makes a new one


@pytest.mark.django_db(transaction=True)
async def test_a_revoked_token_gets_401(make_token):
    _, raw = await database_sync_to_async(make_token)("agent-revoked", "agents")
    assert (await post_event(raw)).status_code == 201
    await database_sync_to_async(revoke)(raw)
    response = await post_event(raw)
    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid or revoked token.", "code": "invalid_token"}
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "header",
    ["Bearer ebt_not-a-token", "Bearer", "Bearer two parts", "bearer " + "x" * 5000],
)
async def test_an_unknown_or_malformed_token_gets_401(header):
    response = await post_event(headers={"Authorization": header})
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_token"


@pytest.mark.django_db(transaction=True)
async def test_the_token_of_a_deactivated_user_gets_401(make_token):
    user, raw = await database_sync_to_async(make_token)("agent-gone", "agents")
    await database_sync_to_async(type(user).objects.filter(pk=user.pk).update)(is_active=False)
    assert (await post_event(raw)).status_code == 401


@pytest.mark.django_db(transaction=True)
async def test_anonymous_gets_401():
    response = await post_event()
    assert response.status_code == 401
    assert response.json() == {
        "detail": "Authentication credentials were not provided.",
        "code": "not_authenticated",
    }


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("group", [None, "auditors", "operators"])
async def test_a_user_who_is_not_an_agent_gets_403(make_token, group):
    _, raw = await database_sync_to_async(make_token)(f"user-{group}", group)
    response = await post_event(raw)
    assert response.status_code == 403
    body = response.json()
    assert body["code"] == "permission_denied" and "events.publish_events" in body["detail"]


@pytest.mark.django_db
def test_last_used_at_is_written_at_most_once_a_minute(make_token, django_assert_num_queries, settings):
    settings.API_TOKEN_CACHE_S = 0  # every request looks the token up
    _, raw = make_token("agent-busy")
    factory = APIRequestFactory()
    authentication = BearerTokenAuthentication()

    def authenticate():
        from rest_framework.request import Request

        request = Request(factory.get("/", HTTP_AUTHORIZATION=f"Bearer {raw}"))
        return authentication.authenticate(request)

    user, token = authenticate()
    assert user.get_username() == "agent-busy"
    first = ApiToken.objects.get(pk=token.pk).last_used_at
    assert first is not None
    with django_assert_num_queries(1):  # the lookup only: no write within the minute
        authenticate()
    assert ApiToken.objects.get(pk=token.pk).last_used_at == first
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=first - timedelta(minutes=2))
    authenticate()  # over a minute since the last use: written again
    latest = ApiToken.objects.get(pk=token.pk).last_used_at
    assert latest is not None and first <= latest <= timezone.now()


@pytest.mark.django_db
def test_a_cached_token_costs_no_query_and_a_revocation_ends_it_at_once(
    make_token, django_assert_num_queries
):
    issued, raw = make_token("agent-cached", "agents")
    factory = APIRequestFactory()
    authentication = BearerTokenAuthentication()

    def authenticate():
        from rest_framework.request import Request

        return authentication.authenticate(Request(factory.get("/", HTTP_AUTHORIZATION=f"Bearer {raw}")))

    user, token = authenticate()
    with django_assert_num_queries(0):  # who the token is, and its permissions, come from memory
        again, _ = authenticate()
        assert again.has_perm("events.publish_events")
    api_token_revoke(token=ApiToken.objects.get(pk=token.pk))
    with pytest.raises(AuthenticationFailed):
        authenticate()


# Roles


@pytest.mark.django_db
def test_setup_roles_creates_the_groups_and_is_idempotent():
    out = StringIO()
    call_command("setup_roles", stdout=out)
    first = out.getvalue()
    assert "Created group 'agents'" in first and "events.publish_events" in first
    for name, permissions in roles().items():
        assert permission_names(Group.objects.get(name=name)) == set(permissions)
    rows = Group.permissions.through.objects.count()

    out = StringIO()
    call_command("setup_roles", stdout=out)
    assert "Created" not in out.getvalue() and "Granted" not in out.getvalue()
    assert "Nothing to do" in out.getvalue()
    assert Group.permissions.through.objects.count() == rows
    assert Group.objects.filter(name__in=roles()).count() == len(roles())


@pytest.mark.django_db
def test_setup_roles_adds_what_is_missing_and_keeps_what_an_admin_added():
    roles_setup()
    agents = Group.objects.get(name="agents")
    extra = Permission.objects.get(codename="view_storedevent")
    agents.permissions.set([extra])  # an admin removed publish_events and added another one
    report = roles_setup()
    assert report.changed and any("events.publish_events" in line for line in report.lines)
    assert permission_names(agents) == {*roles()["agents"], "events.view_storedevent"}


@pytest.mark.django_db
def test_a_listed_permission_missing_from_the_database_is_recreated():
    Permission.objects.filter(codename="publish_events").delete()  # e.g. a database flushed since migrate
    roles_setup()
    assert permission_names(Group.objects.get(name="agents")) == set(roles()["agents"])


@pytest.mark.django_db
@pytest.mark.parametrize("permission", ["events.fly_rockets", "nosuchapp.view_thing", "not-a-permission"])
def test_a_permission_that_does_not_exist_is_named_and_nothing_changes(permission):
    with pytest.raises(ApplicationError, match=permission.replace(".", r"\.")):
        roles_setup(roles={"pilots": (permission,), "agents": ("events.publish_events",)})
    assert not Group.objects.filter(name__in=["pilots", "agents"]).exists()


# create_api_token


def run_create_api_token(*args: str) -> list[str]:
    out = StringIO()
    call_command("create_api_token", *args, stdout=out)
    return out.getvalue().splitlines()


@pytest.mark.django_db(transaction=True)
async def test_create_api_token_prints_the_token_last_and_it_works():
    lines = await database_sync_to_async(run_create_api_token)(
        "runtime-1", "--group", "agents", "--name", "host-a"
    )
    raw = lines[-1]
    assert raw.startswith("ebt_") and " " not in raw
    assert any("Created group 'agents'" in line for line in lines)  # the roles were set up on the way
    user = await database_sync_to_async(get_user_model().objects.get)(username="runtime-1")
    assert not user.has_usable_password()
    tokens = await database_sync_to_async(lambda: list(ApiToken.objects.filter(user=user)))()
    assert [token.name for token in tokens] == ["host-a"]

    response = await post_event(raw)
    assert response.status_code == 201, response.content

    # A second token for the same user: the user is not created again, and both tokens work.
    again = await database_sync_to_async(run_create_api_token)("runtime-1", "--group", "agents")
    assert not any("Created" in line for line in again)
    assert again[-1] != raw
    assert (await post_event(again[-1])).status_code == 201
    assert (await post_event(raw)).status_code == 201


@pytest.mark.django_db
def test_create_api_token_keeps_an_existing_user_as_it_is():
    user = get_user_model().objects.create_user("operator-1", password="a long pass phrase")
    lines = run_create_api_token("operator-1")
    assert lines[-1].startswith("ebt_")
    user.refresh_from_db()
    assert user.check_password("a long pass phrase")
    assert not user.groups.exists()


@pytest.mark.django_db
def test_create_api_token_refuses_an_unknown_group_or_a_bad_name():
    with pytest.raises(CommandError, match="group 'pilots' does not exist"):
        run_create_api_token("someone", "--group", "pilots")
    with pytest.raises(CommandError, match="username"):
        run_create_api_token("not a valid name!")
    with pytest.raises(CommandError, match="at most 100"):
        run_create_api_token("someone", "--name", "n" * 101)
    assert not get_user_model().objects.filter(username="someone").exists()
