"""One site title, one name for the approval page, one date format, sign-out onto a page of the project."""

from datetime import UTC, datetime

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import formats

pytestmark = pytest.mark.django_db

TITLE = "Agent event bus"


def boss() -> Client:
    client = Client()
    client.force_login(get_user_model().objects.create_superuser("boss", password="x" * 12))
    return client


def test_site_title_same_in_admin_and_pages():
    client = boss()
    admin_html = client.get("/admin/").content.decode()
    page_html = client.get("/hitl/").content.decode()
    assert admin.site.site_header == admin.site.site_title == TITLE
    assert f"<title>Administration | {TITLE}</title>" in admin_html
    assert f'<a href="/admin/">{TITLE}</a>' in admin_html
    assert f"· {TITLE}</title>" in page_html


def test_site_approval_page_named_approval_queue_everywhere():
    client = boss()
    for path in ["/admin/", "/hitl/", "/events/live/", "/"]:
        html = client.get(path).content.decode()
        assert 'href="/hitl/"' in html, path
        assert ">Approval queue</a>" in html, path
        assert ">Approvals</a>" not in html, path


def test_site_date_format_with_zone():
    moment = datetime(2026, 12, 5, 15, 0, 7, tzinfo=UTC)
    assert formats.date_format(moment, "DATETIME_FORMAT") == "2026-12-05 15:00:07 UTC"
    assert formats.date_format(moment, "SHORT_DATETIME_FORMAT") == "2026-12-05 15:00:07 UTC"
    assert formats.localize(moment) == "2026-12-05 15:00:07 UTC"


def test_site_signout_lands_on_sign_in_not_logged_out_page():
    client = boss()
    response = client.post("/admin/logout/", follow=True)
    assert response.redirect_chain[0] == ("/", 302)
    assert response.redirect_chain[-1][0] == "/admin/login/?next=/"
    assert b"Logged out" not in response.content


def test_site_admin_view_site_goes_to_overview():
    html = boss().get("/admin/").content.decode()
    assert 'href="/">View site</a>' in html
