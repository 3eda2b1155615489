"""The one entrance for JSON: every surface that takes JSON checks it here, once, before anything else.

REST bodies, query values, page and admin forms, WebSocket frames and the long-poll path all refuse the
same things with the same 400 naming the field: nesting deeper than JSON_MAX_DEPTH, a NUL character or a
lone surrogate in a string or a key, a non-finite number, a key given twice, a value larger than its
field's limit. What passes can be stored by PostgreSQL and SQLite, published on Redis and hashed into the
audit chain without failing later for its shape, so a decision can never be made without its record.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from django.conf import settings

from eventbus_project.exceptions import ApplicationError

DEFAULT_MAX_DEPTH = 64


def max_depth() -> int:
    """JSON_MAX_DEPTH (64 by default): how deeply a value may nest."""
    return int(getattr(settings, "JSON_MAX_DEPTH", DEFAULT_MAX_DEPTH))


def invalid(field: str, message: str, *, code: str = "invalid", status: int = 400) -> ApplicationError:
    """The project's 400 for one bad field: `{"detail", "code", "errors": [{"field", "message"}]}`."""
    return ApplicationError(
        f"{field}: {message}", code=code, status=status, extra={"errors": [{"field": field, "message": message}]}
    )


def text_problem(value: str) -> str | None:
    """What makes `value` unstorable text (a NUL, a lone surrogate), or None."""
    if "\x00" in value:
        return "contains a NUL character"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "contains a lone surrogate (not valid Unicode)"
    return None


def check_text(
    value: Any,
    field: str,
    *,
    max_length: int | None = None,
    required: bool = False,
    allow_none: bool = False,
) -> Any:
    """A string as given (never stripped or coerced): NUL, lone surrogates, a wrong type refused."""
    if value is None and allow_none:
        return None
    if not isinstance(value, str):
        raise invalid(field, f"must be a string, not {json_type(value)}")
    problem = text_problem(value)
    if problem:
        raise invalid(field, problem)
    if required and not value:
        raise invalid(field, "is required")
    if max_length is not None and len(value) > max_length:
        raise invalid(field, f"has {len(value)} characters; at most {max_length} are allowed")
    return value


def check_json(value: Any, field: str, *, max_bytes: int | None = None, depth: int | None = None) -> Any:
    """`value` (already parsed) if JSON can carry it faithfully and the stores can keep it; else a 400.

    Iterative, so no input can reach Python's recursion limit here; `max_bytes` bounds the UTF-8 size of
    its compact JSON text.
    """
    limit = max_depth() if depth is None else depth
    stack: list[tuple[Any, str, int]] = [(value, field, 1)]
    while stack:
        item, path, level = stack.pop()
        kind = type(item)
        if kind is str:
            problem = text_problem(item)
            if problem:
                raise invalid(path, problem)
        elif item is None or kind is bool or kind is int:
            continue
        elif kind is float:
            if not math.isfinite(item):
                raise invalid(path, f"{item!r} is not a JSON number")
        elif kind is dict or kind is list:
            if level > limit:
                raise invalid(field, f"nests deeper than {limit} levels")
            if kind is dict:
                for key, child in item.items():
                    if type(key) is not str:
                        raise invalid(path, f"has a key of type {type(key).__name__}; JSON keys are strings")
                    problem = text_problem(key)
                    if problem:
                        raise invalid(f"{path}.{key[:40]!r}", f"key {problem}")
                    if isinstance(child, dict | list):
                        stack.append((child, f"{path}.{key}", level + 1))
                    else:
                        stack.append((child, f"{path}.{key}", level))
            else:
                for index, child in enumerate(item):
                    if isinstance(child, dict | list):
                        stack.append((child, f"{path}[{index}]", level + 1))
                    else:
                        stack.append((child, f"{path}[{index}]", level))
        else:
            raise invalid(path, f"is not JSON ({kind.__name__})")
    if max_bytes is not None:
        size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
        if size > max_bytes:
            raise invalid(field, f"is {size} bytes as JSON; at most {max_bytes} are allowed", code="too_large")
    return value


def check_object(value: Any, field: str, *, max_bytes: int | None = None) -> dict[str, Any]:
    """A JSON object (dict), checked as check_json does."""
    if not isinstance(value, dict):
        raise invalid(field, f"must be a JSON object, not {json_type(value)}")
    return check_json(value, field, max_bytes=max_bytes)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (use a number, or a string)")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"the key {key!r} appears twice")
        result[key] = value
    return result


def parse_json(text: str | bytes, field: str = "body", *, max_bytes: int | None = None) -> Any:
    """Strictly parse and check `text` (no NaN, no key twice, checked as check_json does); 400 naming
    `field` for anything else, including nesting deep enough to exhaust Python's parser."""
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as error:
            raise invalid(field, f"is not UTF-8: {error.reason} at byte {error.start}") from None
    if max_bytes is not None and len(text) > max_bytes:
        raise invalid(field, f"has more than {max_bytes} bytes", code="too_large")
    try:
        value = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys)
    except RecursionError:
        raise invalid(field, f"nests deeper than {max_depth()} levels") from None
    except json.JSONDecodeError as error:
        raise invalid(field, f"is not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})") from None
    except ValueError as error:  # a constant, a key twice, an integer of 5,000 digits
        raise invalid(field, f"is not valid JSON: {error}") from None
    return check_json(value, field)


def check_query(params: Iterable[tuple[str, str]]) -> None:
    """Query values (and names) that the databases can compare: a NUL or a lone surrogate is a 400."""
    for name, value in params:
        for text in (name, value):
            problem = text_problem(text)
            if problem:
                raise invalid(name if text is value else "query", f"{problem}")


def json_type(value: Any) -> str:
    """A JSON-ish name of `value`'s type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
