"""JSON as a person or an agent meant it: a thin name for core.json_input.parse_json, the one entrance.

Plain json.loads keeps the last of two equal keys silently and accepts NaN, so what is stored (or run)
could differ from what the operator read; it also lets through nesting, NULs and lone surrogates the
stores cannot keep. Kept importable for code that used it; new code calls core.json_input directly.
"""

from __future__ import annotations

from typing import Any

from core.errors import ApplicationError
from core.json_input import parse_json


class StrictJSONError(ValueError):
    """The text is not JSON the server takes: bad syntax, NaN, a key twice, too deep, a NUL or a lone
    surrogate. `field` names where (a dotted path below the field given)."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


def loads(text: str | bytes, field: str = "body") -> Any:
    """Parse `text` as core.json_input.parse_json does; StrictJSONError saying what is wrong and where."""
    try:
        return parse_json(text, field)
    except ApplicationError as error:
        errors = error.extra.get("errors") or [{}]
        raise StrictJSONError(error.message, str(errors[0].get("field") or field)) from None
