"""Revoking API tokens from the admin and from the command: the token authenticates nobody afterwards."""

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from accounts.models import ApiToken
from accounts.services import api_token_issue

# The API authenticates in a worker thread of its own: the tokens must be committed.
pytestmark = pytest.mark.django_db(transaction=True)


def works(token: str) -> bool:
    response = Client().get("/api/hitl/requests/", headers={"Authorization": f"Bearer {token}"})
    return response.status_code == 200


def test_the_admin_revokes_selected_tokens(admin_client):
    issued = api_token_issue(username="agent-x", group="agents")
    assert works(issued.token)
    token = ApiToken.objects.get(user=issued.user)
    response = admin_client.post(
        "/admin/accounts/apitoken/", {"action": "revoke", "_selected_action": [token.pk]}, follow=True
    )
    assert response.status_code == 200 and "Revoked 1 token(s)." in response.content.decode()
    assert not works(issued.token)
    listed = admin_client.get("/admin/accounts/apitoken/")
    assert token.prefix in listed.content.decode() and token.key_hash not in listed.content.decode()
    assert admin_client.get("/admin/accounts/apitoken/add/").status_code == 403


def test_the_command_revokes_by_prefix_or_by_user(capsys):
    first = api_token_issue(username="agent-y", group="agents")
    second = api_token_issue(username="agent-y", group="agents")
    call_command("revoke_api_token", first.token[:12])
    assert not works(first.token) and works(second.token)
    call_command("revoke_api_token", "--user", "agent-y")
    assert not works(second.token)
    with pytest.raises(CommandError):
        call_command("revoke_api_token", "--user", "agent-y")  # nothing active is left
    with pytest.raises(CommandError):
        call_command("revoke_api_token")
