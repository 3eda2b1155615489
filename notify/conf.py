"""The notify app's settings, read through one accessor."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


@dataclass(frozen=True)
class NotifySettings:
    webhook_retry_hours: float
    webhook_retry_base_s: float
    webhook_retry_max_delay_s: float
    webhook_timeout_s: float
    webhook_allow_http: bool
    webhook_allow_loopback: bool
    webhook_poll_interval_s: float
    webhook_page_size: int
    warn_before_s: float
    warn_interval_s: float
    email_digest_s: float
    base_url: str
    slack_bot_token: str
    slack_signing_secret: str
    slack_channel: str
    slack_api_url: str


def _number(name: str, default: float, *, minimum: float = 0.0) -> float:
    value = getattr(settings, name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ImproperlyConfigured(f"{name} must be a number of at least {minimum:g}, not {value!r}")
    return float(value)


def _text(name: str, default: str = "") -> str:
    value = getattr(settings, name, default)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ImproperlyConfigured(f"{name} must be a string, not {value!r}")
    return value.strip()


def notify_settings() -> NotifySettings:
    """WEBHOOK_*, HITL_WARN_BEFORE_S, NOTIFY_* and SLACK_* settings with their defaults, validated."""
    return NotifySettings(
        webhook_retry_hours=_number("WEBHOOK_RETRY_HOURS", 24),
        webhook_retry_base_s=_number("WEBHOOK_RETRY_BASE_S", 1.0, minimum=0.001),
        webhook_retry_max_delay_s=_number("WEBHOOK_RETRY_MAX_DELAY_S", 3600.0, minimum=0.001),
        webhook_timeout_s=_number("WEBHOOK_TIMEOUT_S", 10.0, minimum=0.01),
        webhook_allow_http=bool(getattr(settings, "WEBHOOK_ALLOW_HTTP", False)),
        webhook_allow_loopback=bool(getattr(settings, "WEBHOOK_ALLOW_LOOPBACK", False)),
        webhook_poll_interval_s=_number("WEBHOOK_POLL_INTERVAL_S", 1.0, minimum=0.01),
        webhook_page_size=int(_number("WEBHOOK_PAGE_SIZE", 200, minimum=1)),
        warn_before_s=_number("HITL_WARN_BEFORE_S", 60.0),
        warn_interval_s=_number("HITL_WARN_INTERVAL_S", 1.0, minimum=0.01),
        email_digest_s=_number("NOTIFY_EMAIL_DIGEST_S", 0.0),
        base_url=_text("NOTIFY_BASE_URL", "http://127.0.0.1:8000").rstrip("/"),
        slack_bot_token=_text("SLACK_BOT_TOKEN"),
        slack_signing_secret=_text("SLACK_SIGNING_SECRET"),
        slack_channel=_text("SLACK_CHANNEL"),
        slack_api_url=_text("SLACK_API_URL", "https://slack.com/api/"),
    )
