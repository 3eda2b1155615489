"""The events app's settings, read through one accessor (settings.EVENT_BUS)."""

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


@dataclass(frozen=True)
class BusSettings:
    max_queue_size: int
    overflow: str
    handler_timeout: float | None
    shutdown_timeout: float
    redis_channel: str = "eventbus:events"


def bus_settings() -> BusSettings:
    """The bus settings with defaults, validated so a bad value fails at start-up with its name."""
    raw: dict[str, Any] = getattr(settings, "EVENT_BUS", {}) or {}
    max_queue_size = raw.get("MAX_QUEUE_SIZE", 10_000)
    if not isinstance(max_queue_size, int) or isinstance(max_queue_size, bool) or max_queue_size < 1:
        raise ImproperlyConfigured(
            f"EVENT_BUS['MAX_QUEUE_SIZE'] must be a positive integer, not {max_queue_size!r}"
        )
    overflow = raw.get("OVERFLOW", "wait")
    if overflow not in ("wait", "drop"):
        raise ImproperlyConfigured(f"EVENT_BUS['OVERFLOW'] must be 'wait' or 'drop', not {overflow!r}")
    handler_timeout = raw.get("HANDLER_TIMEOUT", 30.0)
    if handler_timeout is not None and (not isinstance(handler_timeout, int | float) or handler_timeout <= 0):
        raise ImproperlyConfigured(
            f"EVENT_BUS['HANDLER_TIMEOUT'] must be positive or None, not {handler_timeout!r}"
        )
    shutdown_timeout = raw.get("SHUTDOWN_TIMEOUT", 30.0)
    if not isinstance(shutdown_timeout, int | float) or shutdown_timeout < 0:
        raise ImproperlyConfigured(f"EVENT_BUS['SHUTDOWN_TIMEOUT'] must be >= 0, not {shutdown_timeout!r}")
    redis_channel = raw.get("REDIS_CHANNEL", "eventbus:events")
    if not isinstance(redis_channel, str) or not redis_channel.strip():
        raise ImproperlyConfigured(
            f"EVENT_BUS['REDIS_CHANNEL'] must be a non-empty string, not {redis_channel!r}"
        )
    return BusSettings(
        max_queue_size=max_queue_size,
        overflow=overflow,
        handler_timeout=float(handler_timeout) if handler_timeout is not None else None,
        shutdown_timeout=float(shutdown_timeout),
        redis_channel=redis_channel.strip(),
    )


DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024


def max_body_bytes() -> int:
    """The largest body POST /api/events/ reads (settings.EVENTS_MAX_BODY_BYTES, default 8 MiB)."""
    value = getattr(settings, "EVENTS_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ImproperlyConfigured(f"EVENTS_MAX_BODY_BYTES must be a positive integer, not {value!r}")
    return value
