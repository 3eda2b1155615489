"""Content negotiation: the export views choose their own format; the API answers JSON to programs and
the browsable API to a signed-in browser."""

from __future__ import annotations

from collections.abc import Iterable

from rest_framework.negotiation import BaseContentNegotiation, DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer, BrowsableAPIRenderer
from rest_framework.request import Request


class FirstRenderer(BaseContentNegotiation):
    """No negotiation: `format` names the export's file format, not one of DRF's renderers (DRF would
    answer 404 to ?format=csv), and an `Accept: text/csv` must not get a 406. Errors are JSON."""

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        renderer = next(iter(renderers))
        return renderer, renderer.media_type


class SignedInBrowsableAPIRenderer(BrowsableAPIRenderer):
    """DRF's browsable API, rendered on the event loop (AsyncAPIView renders there): nothing in it may
    query the database, so the permission checks behind its forms read the cache warmed in
    `SignedInBrowserNegotiation` (which runs in a worker thread)."""


class SignedInBrowserNegotiation(DefaultContentNegotiation):
    """JSON for every program; the browsable API (HTML) only for a browser signed in with a session.

    A request with an `Authorization` header (an agent's Bearer token) or without a signed-in session user
    never gets HTML, whatever its `Accept` says: errors stay `{"detail", "code"}` JSON, as the contract
    says. JSON is the first renderer, so no `Accept` (or `*/*`) still means JSON.
    """

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        renderers = list(renderers)
        if not self._browser(request):
            renderers = [r for r in renderers if not isinstance(r, BrowsableAPIRenderer)]
        return super().select_renderer(request, renderers, format_suffix)

    @staticmethod
    def _browser(request: Request) -> bool:
        if "HTTP_AUTHORIZATION" in request.META:
            return False
        user = getattr(request._request, "user", None)  # Django's session user (AuthenticationMiddleware)
        if user is None or not user.is_authenticated:
            return False
        user.get_all_permissions()  # cached on the user: the renderer's form checks need no query
        return True
