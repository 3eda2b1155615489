"""Content negotiation for views whose answer's format is theirs to choose."""

from __future__ import annotations

from collections.abc import Iterable

from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request


class FirstRenderer(BaseContentNegotiation):
    """No negotiation: `format` names the export's file format, not one of DRF's renderers (DRF would
    answer 404 to ?format=csv), and an `Accept: text/csv` must not get a 406. Errors are JSON."""

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        renderer = next(iter(renderers))
        return renderer, renderer.media_type
