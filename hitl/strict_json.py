"""JSON as a person or an agent meant it: json.loads without NaN/Infinity and without a key given twice.

Plain json.loads keeps the last of two equal keys silently and accepts NaN, so what is stored (or run)
could differ from what the operator read. The admin's editor and the approval page both parse with it.
"""

from __future__ import annotations

import json
from typing import Any


class StrictJSONError(ValueError):
    """The text is JSON only to Python's lenient parser: a NaN/Infinity, or a key given twice."""


def _reject_constant(name: str) -> Any:
    raise StrictJSONError(f"{name} is not JSON (use a number, or a string)")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise StrictJSONError(f"the key {key!r} appears twice")
        result[key] = value
    return result


def loads(text: str | bytes) -> Any:
    """Parse `text`; json.JSONDecodeError for bad syntax, StrictJSONError for what JSON does not allow."""
    return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys)
