"""Signing out: the admin's own sign-out, then a word on the sign-in page it leads to."""

from __future__ import annotations

from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse

SIGNED_OUT = "You have signed out."


def sign_out(request: HttpRequest) -> HttpResponse:
    """The admin's sign-out (POST, CSRF-checked, then LOGOUT_REDIRECT_URL: `/`, which sends an anonymous
    visitor on to the sign-in page); that page then says "You have signed out." (a message of the
    messages framework: it rides in a cookie, as the session it would have used is gone)."""
    was_signed_in = request.user.is_authenticated
    response = admin.site.logout(request)
    if was_signed_in and not request.user.is_authenticated and response.status_code == 302:
        messages.info(request, SIGNED_OUT)
    return response
