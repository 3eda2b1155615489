"""Query values as the API takes them: strictly written, within bounds, or a 400 naming the parameter."""

from __future__ import annotations

import re

from .errors import ApplicationError
from .json_input import shown_value

_DIGITS = re.compile(r"[0-9]{1,20}")
_DECIMAL = re.compile(r"[0-9]{1,20}(?:\.[0-9]{1,20})?")


def int_param(raw: str | None, name: str, *, default: int | None, low: int, high: int | None) -> int | None:
    """A query value of digits only, within [low, high]; `default` when absent; else a 400 naming it."""
    if raw is None or raw == "":
        return default
    # Digits only: int() would also take " 5", "+5" and "5_0", a padded or disguised value.
    if not _DIGITS.fullmatch(raw):
        raise bad_param(name, f"{shown_value(raw)} is not a whole number written in digits")
    value = int(raw)
    if value < low or (high is not None and value > high):
        raise bad_param(name, f"must be between {low} and {high}" if high else f"must be at least {low}")
    return value


def seconds_param(raw: str | None, name: str, *, high: float) -> float:
    """A query value of seconds (digits, an optional decimal part) within [0, high]; 0 when absent."""
    if raw is None or raw == "":
        return 0.0
    # float() would also take " 5", "1e1", "nan" and "5_0".
    if not _DECIMAL.fullmatch(raw):
        raise bad_param(name, f"{shown_value(raw)} is not a number of seconds, e.g. 30 or 2.5")
    value = float(raw)
    if not 0 <= value <= high:
        raise bad_param(name, f"must be between 0 and {high:g}")
    return value


def bad_param(name: str, message: str) -> ApplicationError:
    """The 400 for a query parameter, naming it."""
    return ApplicationError(
        f"{name}: {message}",
        code="invalid",
        status=400,
        extra={"errors": [{"field": name, "message": message}]},
    )
