"""The operators' overview at `/`: the day at a glance, with a link to every page."""

from __future__ import annotations

from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from django.views.decorators.http import require_safe

from events.views import forbidden

from .selectors import EXPIRING_WITHIN_S, overview


def _refused(request: HttpRequest) -> HttpResponse | None:
    """Anonymous: to the sign-in page, back here after; signed in but not staff: the 403 page."""
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    if not request.user.is_staff:
        return forbidden(request, page="The overview", role="staff")
    return None


@require_safe
def overview_page(request: HttpRequest) -> HttpResponse:
    """Counts, the chain's state and the links; the figures then refresh from `overview_data`."""
    refused = _refused(request)
    if refused is not None:
        return refused
    context = {"data": overview(), "expiring_within_min": EXPIRING_WITHIN_S // 60, "nav": "overview"}
    return TemplateResponse(request, "ops/overview.html", context)


@require_safe
def overview_data(request: HttpRequest) -> HttpResponse:
    """The overview's figures as JSON (what the page fetches to stay current)."""
    if not request.user.is_authenticated or not request.user.is_staff:
        return JsonResponse({"detail": "Staff only.", "code": "permission_denied"}, status=403)
    return JsonResponse(overview())
