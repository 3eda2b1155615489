"""The API answers JSON to programs and DRF's browsable API to a signed-in browser (core.negotiation)."""

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.test import AsyncClient

from accounts.services import api_token_issue, roles_setup

pytestmark = pytest.mark.django_db(transaction=True)

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


async def signed_in_client() -> AsyncClient:
    User = get_user_model()
    user = await sync_to_async(User.objects.create_superuser)("boss", password="x" * 12)
    client = AsyncClient()
    await client.aforce_login(user)
    return client


async def test_browsable_api_for_a_signed_in_browser():
    client = await signed_in_client()
    response = await client.get("/api/events/", headers={"accept": BROWSER})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    assert "Agent event bus API</title>" in html and "&quot;results&quot;" in html


async def test_browsable_api_post_form_for_a_non_superuser_operator():
    await sync_to_async(roles_setup)()
    issued = await sync_to_async(api_token_issue)(username="op", group="operators")
    user = await sync_to_async(get_user_model().objects.get)(username="op")
    client = AsyncClient()
    await client.aforce_login(user)
    response = await client.get("/api/hitl/requests/?status=pending", headers={"accept": BROWSER})
    assert response.status_code == 200, response.content[:500]
    assert response["Content-Type"].startswith("text/html")
    assert issued.token


async def test_browsable_api_json_stays_json_for_programs():
    client = await signed_in_client()
    assert (await client.get("/api/events/"))["Content-Type"] == "application/json"
    assert (await client.get("/api/events/", headers={"accept": "*/*"}))["Content-Type"] == "application/json"
    assert (await client.get("/api/events/", headers={"accept": "application/json"}))[
        "Content-Type"
    ] == "application/json"


async def test_browsable_api_never_for_bearer_or_anonymous():
    await sync_to_async(roles_setup)()
    issued = await sync_to_async(api_token_issue)(username="auditor", group="auditors")
    response = await AsyncClient().get(
        "/api/events/", headers={"accept": BROWSER, "authorization": f"Bearer {issued.token}"}
    )
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    anonymous = await AsyncClient().get("/api/events/", headers={"accept": BROWSER})
    assert anonymous.status_code == 401
    assert anonymous["Content-Type"] == "application/json"
    assert anonymous.json()["code"] == "not_authenticated"
