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
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote_to_bytes

from django.conf import settings

from core.errors import ApplicationError

DEFAULT_MAX_DEPTH = 64


def max_depth() -> int:
    """JSON_MAX_DEPTH (64 by default): how deeply a value may nest."""
    return int(getattr(settings, "JSON_MAX_DEPTH", DEFAULT_MAX_DEPTH))


def invalid(field: str, message: str, *, code: str = "invalid", status: int = 400) -> ApplicationError:
    """The project's 400 for one bad field: `{"detail", "code", "errors": [{"field", "message"}]}`."""
    return ApplicationError(
        f"{field}: {message}",
        code=code,
        status=status,
        extra={"errors": [{"field": field, "message": message}]},
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


def _child(path: str, key: str) -> str:
    return key if not path else f"{path}.{key}"


def _item(path: str, index: int) -> str:
    return f"{path}[{index}]"


_INFINITIES = (math.inf, -math.inf)


def _bad_text(text: str) -> bool:
    if "\x00" in text:
        return True
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _has_problem(value: Any, level: int, limit: int) -> bool:
    """Whether check_json would refuse `value` (recursing only into containers, never past `limit`)."""
    kind = type(value)
    if kind is dict:
        if level > limit:
            return True
        children: Any = value.values()
        for key in value:
            if type(key) is not str or _bad_text(key):
                return True
    elif kind is list:
        if level > limit:
            return True
        children = value
    else:
        children = (value,)
        level -= 1  # a scalar at the top is not a level of nesting
    for child in children:
        child_kind = type(child)
        if child_kind is str:
            if _bad_text(child):
                return True
        elif child_kind is dict or child_kind is list:
            if _has_problem(child, level + 1, limit):
                return True
        elif child_kind is float:
            if child != child or child in _INFINITIES:
                return True
        elif not (child is None or child_kind is bool or child_kind is int):
            return True
    return False


def check_json(
    value: Any,
    field: str,
    *,
    max_bytes: int | None = None,
    depth: int | None = None,
    path: str | None = None,
) -> Any:
    """`value` (already parsed) if JSON can carry it faithfully and the stores can keep it; else a 400.

    Errors inside the value name its dotted path below `path` (`field` by default; "" names a body's
    keys bare, as serializers do: `arguments.x`). Iterative, so no input can reach Python's recursion
    limit here; `max_bytes` bounds the UTF-8 size of its compact JSON text.
    """
    limit = max_depth() if depth is None else depth
    if not _has_problem(value, 1, limit):
        # The common case, cheaply: nothing wrong, so no path is built. Otherwise the walk below finds
        # the first problem again and names where it is.
        if max_bytes is not None:
            _check_size(value, field, max_bytes)
        return value
    base = field if path is None else path
    # (value, its path, its nesting level, the name a depth error gives: the field, or a body's key)
    stack: list[tuple[Any, str, int, str]] = [(value, base, 1, field)]
    while stack:
        item, where, level, top = stack.pop()
        name = where or field
        kind = type(item)
        if kind is str:
            problem = text_problem(item)
            if problem:
                raise invalid(name, problem)
        elif item is None or kind is bool or kind is int:
            continue
        elif kind is float:
            if not math.isfinite(item):
                raise invalid(name, f"{item!r} is not a JSON number")
        elif kind is dict or kind is list:
            if level > limit:
                raise invalid(top, f"nests deeper than {limit} levels")
            if kind is dict:
                for key, child in item.items():
                    if type(key) is not str:
                        raise invalid(name, f"has a key of type {type(key).__name__}; JSON keys are strings")
                    problem = text_problem(key)
                    if problem:
                        raise invalid(_child(where, _shown_key(key)), f"key {problem}")
                    child_path = _child(where, key)
                    child_top = child_path if not where else top
                    nested = isinstance(child, dict | list)
                    stack.append((child, child_path, level + 1 if nested else level, child_top))
            else:
                for index, child in enumerate(item):
                    child_path = _item(where, index)
                    child_top = child_path if not where else top
                    nested = isinstance(child, dict | list)
                    stack.append((child, child_path, level + 1 if nested else level, child_top))
        else:
            raise invalid(name, f"is not JSON ({kind.__name__})")
    if max_bytes is not None:
        _check_size(value, field, max_bytes)
    return value


def _check_size(value: Any, field: str, max_bytes: int) -> None:
    size = json_size(value)
    if size > max_bytes:
        raise invalid(field, f"is {size} bytes as JSON; at most {max_bytes} are allowed", code="too_large")


def _shown_key(key: str) -> str:
    """A key that cannot be shown as it is (a NUL, a lone surrogate), as a safe, short repr."""
    return ascii(key[:40])


def json_size(value: Any) -> int:
    """The UTF-8 size of `value` as compact JSON (the size the stores and the bus carry)."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


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


def parse_json(
    text: str | bytes, field: str = "body", *, max_bytes: int | None = None, path: str | None = None
) -> Any:
    """Strictly parse and check `text` (no NaN, no key twice, checked as check_json does); 400 naming
    `field` (or, inside the value, the dotted path below `path`) for anything else, including nesting
    deep enough to exhaust Python's parser."""
    if isinstance(text, bytes | bytearray | memoryview):
        raw = bytes(text)
        if max_bytes is not None and len(raw) > max_bytes:
            raise invalid(field, f"has {len(raw)} bytes; at most {max_bytes} are allowed", code="too_large")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise invalid(field, f"is not UTF-8: {error.reason} at byte {error.start}") from None
    elif max_bytes is not None and len(text) > max_bytes:
        # Characters first (cheap): UTF-8 has at least as many bytes as characters.
        raise invalid(
            field, f"has more than {max_bytes} bytes; at most {max_bytes} are allowed", code="too_large"
        )
    elif max_bytes is not None and not text.isascii():
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            raise invalid(field, f"has {size} bytes; at most {max_bytes} are allowed", code="too_large")
    try:
        value = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys)
    except RecursionError:
        name = _too_deep_name(text, field, path)
        raise invalid(name, f"nests deeper than {max_depth()} levels") from None
    except json.JSONDecodeError as error:
        raise invalid(
            field, f"is not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})"
        ) from None
    except ValueError as error:  # a constant, a key twice, an integer of 5,000 digits
        raise invalid(field, f"is not valid JSON: {_safe(str(error))}") from None
    return check_json(value, field, path=path)


def _safe(message: str) -> str:
    """A parser's message, which may quote the input, fit for a JSON answer (no NUL, no lone
    surrogate, not huge)."""
    if text_problem(message):
        message = message.encode("ascii", "backslashreplace").decode("ascii").replace("\x00", "\\x00")
    return message[:300]


_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{},:]')


def _too_deep_name(text: str, field: str, path: str | None) -> str:
    """Which member of a body nests too deeply (its key, or [index]), found without parsing it: only
    when the body's keys are named bare; otherwise the field itself."""
    if path is None or path != "":
        return field
    limit = max_depth()
    level = 0
    index = 0
    key: str | None = None
    last: str | None = None
    root = ""
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            level += 1
            if level == 1:
                root = token
            elif level > limit:
                if root == "[":
                    return f"[{index}]"
                return key if key is not None and not text_problem(key) else field
        elif token in ("]", "}"):
            level -= 1
        elif level == 1 and token == ",":
            index += 1
        elif level == 1 and token == ":" and last is not None:
            try:
                key = json.loads(last)
            except ValueError:
                key = None
        last = token if token.startswith('"') else None
    return field


def check_query(params: Any) -> None:
    """Query values (and names) that the databases can compare: a NUL or a lone surrogate is a 400
    naming the parameter. `params` is a QueryDict (every value of each name) or (name, value) pairs."""
    pairs: Iterable[tuple[str, str]]
    if hasattr(params, "lists"):
        pairs = ((name, value) for name, values in params.lists() for value in values)
    else:
        pairs = params
    for name, value in pairs:
        problem = text_problem(name)
        if problem:
            raise invalid("query", f"a parameter's name {problem}")
        problem = text_problem(value)
        if problem:
            raise invalid(name, problem)


def check_choice(value: Any, field: str, choices: Iterable[str]) -> str:
    """`value` if it is one of `choices` (exactly: no trimming, no other case); else a 400 naming the
    field and the values allowed."""
    allowed = list(choices)
    if isinstance(value, str) and value in allowed:
        return value
    shown = shown_value(value)
    raise invalid(field, f"must be one of {', '.join(allowed)}; not {shown}")


def shown_value(value: Any) -> str:
    """`value` quoted for an error message: short, ASCII (so a NUL or a lone surrogate is escaped)."""
    if isinstance(value, str):
        return ascii(value[:60]) + ("..." if len(value) > 60 else "")
    return json_type(value)


def check_form_encoding(body: bytes) -> None:
    """An application/x-www-form-urlencoded body whose every name and value is UTF-8 without NUL.

    Django decodes a form with errors="replace": a value whose bytes are a lone surrogate (or any bad
    UTF-8) would reach the view as U+FFFD, silently another text. Here it is a 400 naming the field.
    """
    for pair in body.split(b"&"):
        if not pair:
            continue
        raw_name, _, raw_value = pair.partition(b"=")
        try:
            name = unquote_to_bytes(raw_name.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError:
            raise invalid("form", "a field's name is not UTF-8") from None
        try:
            value = unquote_to_bytes(raw_value.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError as error:
            raise invalid(_form_name(name), f"is not UTF-8 ({error.reason}); a lone surrogate?") from None
        problem = text_problem(value)
        if problem:
            raise invalid(_form_name(name), problem)


def _form_name(name: str) -> str:
    return name if not text_problem(name) else "form"


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
