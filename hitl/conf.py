"""The hitl app's settings, read through one accessor."""

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


@dataclass(frozen=True)
class HitlSettings:
    default_timeout_s: float
    max_timeout_s: float
    sweep_interval_s: float
    recheck_interval_s: float
    max_arguments_bytes: int = 64 * 1024
    # HITL_TOOL_RISK as (tool name or glob, level) pairs, in the setting's order.
    tool_risk: tuple[tuple[str, str], ...] = ()


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ImproperlyConfigured(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


def hitl_settings() -> HitlSettings:
    """HITL_* settings with their defaults, validated."""
    default = _positive("HITL_DEFAULT_TIMEOUT_S", getattr(settings, "HITL_DEFAULT_TIMEOUT_S", 900))
    maximum = _positive("HITL_MAX_TIMEOUT_S", getattr(settings, "HITL_MAX_TIMEOUT_S", 7 * 24 * 3600))
    if default > maximum:
        raise ImproperlyConfigured("HITL_DEFAULT_TIMEOUT_S is larger than HITL_MAX_TIMEOUT_S")
    return HitlSettings(
        default_timeout_s=default,
        max_timeout_s=maximum,
        sweep_interval_s=_positive("HITL_SWEEP_INTERVAL_S", getattr(settings, "HITL_SWEEP_INTERVAL_S", 1.0)),
        recheck_interval_s=_positive(
            "HITL_RECHECK_INTERVAL_S", getattr(settings, "HITL_RECHECK_INTERVAL_S", 10.0)
        ),
        max_arguments_bytes=int(
            _positive("HITL_MAX_ARGUMENTS_BYTES", getattr(settings, "HITL_MAX_ARGUMENTS_BYTES", 64 * 1024))
        ),
        tool_risk=parse_tool_risk(getattr(settings, "HITL_TOOL_RISK", None)),
    )


RISK_LEVELS = ("low", "medium", "high")
MAX_RISK_PATTERN = 255


def parse_tool_risk(value: Any) -> tuple[tuple[str, str], ...]:
    """HITL_TOOL_RISK (a dict: tool name or glob -> "low" | "medium" | "high") as ordered pairs; else
    ImproperlyConfigured naming the entry that is wrong."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ImproperlyConfigured(
            f'HITL_TOOL_RISK must be a dict of tool name or glob to "low", "medium" or "high", '
            f"not {type(value).__name__}"
        )
    pairs = []
    for pattern, level in value.items():
        if not isinstance(pattern, str) or not pattern.strip() or len(pattern) > MAX_RISK_PATTERN:
            raise ImproperlyConfigured(
                f"HITL_TOOL_RISK: {pattern!r} is not a tool name or glob (a non-empty string of at most "
                f"{MAX_RISK_PATTERN} characters)"
            )
        if level not in RISK_LEVELS:
            raise ImproperlyConfigured(
                f'HITL_TOOL_RISK[{pattern!r}] must be "low", "medium" or "high", not {level!r}'
            )
        pairs.append((pattern, str(level)))
    return tuple(pairs)


def tool_risk(tool_name: str, rules: tuple[tuple[str, str], ...] | None = None) -> str | None:
    """A tool's risk level: by HITL_TOOL_RISK (its own name's entry, else the first glob, in the
    setting's order, that matches it), else the `"x-risk"` its registered or configured schema declares;
    None when neither names it. The setting wins, so operators can overrule what a tool's author said."""
    if rules is None:
        rules = hitl_settings().tool_risk
    for pattern, level in rules:
        if pattern == tool_name:
            return level
    for pattern, level in rules:
        if fnmatchcase(tool_name, pattern):
            return level
    return schema_risk(tool_schema(tool_name))


RISK_KEYWORD = "x-risk"


def schema_risk(schema: Any) -> str | None:
    """The risk level a tool's JSON Schema declares with a top-level `"x-risk"` (None: none declared,
    or a value that is not one of RISK_LEVELS: register_tool_schema refuses those)."""
    if not isinstance(schema, dict):
        return None
    level = schema.get(RISK_KEYWORD)
    return level if isinstance(level, str) and level in RISK_LEVELS else None


_registered: dict[str, dict[str, Any]] = {}


def register_tool_schema(tool_name: str, schema: dict[str, Any]) -> None:
    """Register the JSON Schema that edited arguments of `tool_name` must satisfy."""
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(schema)
    if RISK_KEYWORD in schema and schema_risk(schema) is None:
        raise ValueError(
            f'{tool_name}: "{RISK_KEYWORD}" must be "low", "medium" or "high", not {schema[RISK_KEYWORD]!r}'
        )
    _registered[tool_name] = schema


def unregister_tool_schema(tool_name: str) -> None:
    """Forget a schema registered with register_tool_schema."""
    _registered.pop(tool_name, None)


def tool_schema(tool_name: str) -> dict[str, Any] | None:
    """The JSON Schema for the tool's arguments: registered in code, or in settings.HITL_TOOL_SCHEMAS."""
    if tool_name in _registered:
        return _registered[tool_name]
    configured: dict[str, Any] = getattr(settings, "HITL_TOOL_SCHEMAS", {}) or {}
    return configured.get(tool_name)
