"""Signing out (the pages' button and the admin's link, both POST /admin/logout/) lands on the sign-in
page, which says so."""

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


def test_signing_out_says_so_on_the_sign_in_page_once(django_user_model):
    boss = django_user_model.objects.create_user("boss", password="pw", is_staff=True)
    client = Client()
    client.force_login(boss)
    response = client.post("/admin/logout/", follow=True)
    assert response.redirect_chain == [("/", 302), ("/admin/login/?next=/", 302)]
    assert "You have signed out." in response.content.decode()
    assert "_auth_user_id" not in client.session
    assert "You have signed out." not in client.get("/admin/login/").content.decode()  # said once


def test_nobody_signed_in_is_not_told_they_signed_out():
    response = Client().post("/admin/logout/", follow=True)
    assert "You have signed out." not in response.content.decode()


def test_signing_out_needs_a_post_with_the_csrf_token(django_user_model):
    boss = django_user_model.objects.create_user("boss", password="pw", is_staff=True)
    client = Client(enforce_csrf_checks=True)
    client.force_login(boss)
    assert client.get("/admin/logout/").status_code == 405
    assert client.post("/admin/logout/").status_code == 403
    assert "_auth_user_id" in client.session
