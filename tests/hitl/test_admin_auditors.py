"""Issue 14: auditors read approval requests in the admin, read-only; deciding stays the operators'."""

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse

from accounts.roles import AUDITORS
from accounts.services import roles_setup

from .test_admin import CHANGELIST, ask, change_url, client_for, refreshed, shown

pytestmark = pytest.mark.django_db


@pytest.fixture
def auditor(django_user_model):
    """A staff member of the auditors group of setup_roles."""
    roles_setup()
    user = django_user_model.objects.create_user("audra", password="pw", is_staff=True)
    user.groups.add(Group.objects.get(name=AUDITORS))
    return user


def test_auditors_find_approval_requests_in_the_admin_but_not_the_approval_page(auditor):
    client = client_for(auditor)

    index = client.get(reverse("admin:index")).content.decode()
    assert f'href="{CHANGELIST}"' in index
    assert "approvalrule" not in index  # the rules are not theirs
    assert client.get("/hitl/").status_code == 403


def test_auditors_view_approval_requests_but_never_decide(auditor):
    request = ask("call-1")
    client = client_for(auditor)

    listed = client.get(CHANGELIST)
    assert shown(listed) == ["call-1"] and "approve_selected" not in listed.content.decode()
    page = client.get(change_url(request))
    html = page.content.decode()
    assert page.status_code == 200 and page.context["decide_form"] is None
    assert 'id="hitl-decision"' not in html and 'name="_decision"' not in html
    check = reverse("admin:hitl_approvalrequest_check", args=[request.pk])
    for decision in ("approve", "reject", "edit", "confirm_edit"):
        assert client.post(change_url(request), {"_decision": decision, "arguments": "{}"}).status_code == 403
    assert client.post(check, {"arguments": "{}"}).status_code == 403
    assert refreshed(request).status == "pending"
