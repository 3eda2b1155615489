"""The sign-in lock-out (django-axes): the backend that refuses a locked-out username, and its page.

Settings (eventbus_project.settings): AXES_FAILURE_LIMIT failures of one username within AXES_COOLOFF_TIME
lock it for AXES_COOLOFF_TIME, even with the right password. The audit trail records the lock-out once
(events.signals.on_locked_out), not each attempt refused while it lasts.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
from axes.backends import AxesStandaloneBackend
from axes.helpers import get_client_username, get_cool_off, get_failure_limit
from axes.models import AccessAttempt
from django.contrib import admin
from django.db.models import Max
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

LOCKED_OUT_TEMPLATE = "admin/locked_out.html"


class SignInLockoutBackend(AxesStandaloneBackend):
    """axes' standalone backend (it checks the lock-out; ModelBackend, next, checks the password), for
    sign-ins that come with an HTTP request.

    `authenticate()` without a request is the server's own code (a management command, a shell, the test
    client's login()): nobody outside can repeat it, so there is nothing to count or refuse, where axes
    would raise instead. It has no get_user(), like axes' backend, so force_login() and the session keep
    naming ModelBackend.
    """

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> None:
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)

    async def aauthenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> None:
        """django.contrib.auth.aauthenticate() calls this; axes' backend has no async variant."""
        return await sync_to_async(self.authenticate)(request, username=username, password=password, **kwargs)


def _locked_until(username: str, cool_off: timedelta) -> Any:
    """When the lock-out of `username` ends: the cool-off after its last failure (refused attempts are
    not recorded, so they do not move it)."""
    last = AccessAttempt.objects.filter(username=username).aggregate(last=Max("attempt_time"))["last"]
    return (last or timezone.now()) + cool_off


def lockout_response(
    request: HttpRequest, original_response: Any = None, credentials: dict[str, Any] | None = None
) -> HttpResponse:
    """AXES_LOCKOUT_CALLABLE: the admin's sign-in page saying the username is locked and until when,
    429 with Retry-After. (axes passes the credentials in different places in its sync and async
    middleware; the request carries them either way.)"""
    credentials = getattr(request, "axes_credentials", None) or credentials
    username = str(get_client_username(request, credentials) or "")
    cool_off = get_cool_off(request) or timedelta(0)
    until = _locked_until(username, cool_off)
    retry_after = max(1, math.ceil((until - timezone.now()).total_seconds()))
    context = {
        **admin.site.each_context(request),
        "title": "Sign-in locked",
        "username": username,
        "failure_limit": get_failure_limit(request, credentials),
        "cooloff_minutes": max(1, math.ceil(cool_off.total_seconds() / 60)),
        "locked_until": until,
        "retry_after_minutes": max(1, math.ceil(retry_after / 60)),
    }
    response = render(request, LOCKED_OUT_TEMPLATE, context, status=429)
    response["Retry-After"] = str(retry_after)
    return response
