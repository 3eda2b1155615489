"""DRF's JSON parser, strict: every REST body goes through the one JSON entrance (core.json_input).

DRF's JSONParser is json.loads: it accepts NaN and a key given twice (the last wins, silently), and
leaves a body nested a thousand levels deep, a NUL or a lone surrogate for the view, the database or
the audit chain to fail on later, as a 500. Here each is a 400 `invalid` naming the field (`body`, or
the dotted path of the member, e.g. `arguments.path`), before any view code runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, Any

from django.conf import settings
from rest_framework.parsers import JSONParser

from core.errors import PayloadTooLarge

from .json_input import parse_json

DEFAULT_MAX_BODY_BYTES = 2_621_440  # Django's DATA_UPLOAD_MAX_MEMORY_SIZE default


def max_body_bytes() -> int | None:
    """How large a JSON body may be: Django's DATA_UPLOAD_MAX_MEMORY_SIZE (None: no limit)."""
    limit = getattr(settings, "DATA_UPLOAD_MAX_MEMORY_SIZE", DEFAULT_MAX_BODY_BYTES)
    return None if limit is None else int(limit)


class StrictJSONParser(JSONParser):
    """application/json through core.json_input.parse_json: depth, NUL, lone surrogates, NaN, keys
    given twice and the body's size are refused with a 400 naming the field."""

    def parse(
        self,
        stream: IO[bytes] | None,
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        if stream is None:
            return {}
        limit = max_body_bytes()
        # One byte past the limit tells a body that is too large from one that is just right.
        body = stream.read() if limit is None else stream.read(limit + 1)
        if limit is not None and len(body) > limit:
            raise PayloadTooLarge(f"The body has more than {limit} bytes; at most {limit} are accepted.")
        return parse_json(body, "body", path="")
