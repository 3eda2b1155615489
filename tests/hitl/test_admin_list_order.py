"""Issue 14: the approval requests' list says which column its rows are in the order of."""

import pytest

from hitl.services import approval_decide

from .test_admin import CHANGELIST, ask, client_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def root(django_user_model):
    return django_user_model.objects.create_superuser("root", "root@example.com", "pw")


def marked(client, params: dict) -> dict[str, str]:
    cl = client.get(CHANGELIST, params).context["cl"]
    return {cl.list_display[index]: order for index, order in cl.get_ordering_field_columns().items()}


def test_the_header_marks_the_deadline_for_pending_requests_and_creation_for_decided_ones(root):
    ask("call-1")
    ask("call-2")
    approval_decide(call_id="call-2", user=root, decision="APPROVE")
    client = client_for(root)

    assert marked(client, {}) == {"expires": "asc"}
    assert marked(client, {"status__exact": "pending"}) == {"expires": "asc"}
    assert marked(client, {"status__exact": "approved"}) == {"created": "desc"}
