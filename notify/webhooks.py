"""Webhooks: the endpoint rules (https, no loopback, a usable secret), the signal that wakes the
delivery worker, and the signed request of one delivery.

The outbox is the store itself: an event is durable, in its position, when its transaction commits, and
each endpoint keeps how far it has queued (`WebhookEndpoint.queued_position`). Its worker turns the
stored events after that position into `WebhookDelivery` rows (notify.services.webhook_enqueue), off
the ingest path, so storing an event costs nothing more however many endpoints there are.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from standardwebhooks import Webhook

from core.errors import ApplicationError
from events.event_types import EventCategory

from .conf import notify_settings

RESPONSE_EXCERPT_BYTES = 1024
DELIVERY_COLUMNS = (
    "endpoint_id",
    "position",
    "event_id",
    "event_type",
    "created_at",
    "attempts",
    "last_error",
)
_LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")
CATEGORIES = frozenset(category.value for category in EventCategory)


# The endpoint rules


def check_secret(secret: str) -> None:
    """Refuse a secret the standardwebhooks library cannot sign with (400 naming `secret`)."""
    if not isinstance(secret, str) or not secret.startswith("whsec_"):
        raise ApplicationError("secret: must start with whsec_", code="invalid", status=400)
    try:
        Webhook(secret)
    except Exception as error:
        raise ApplicationError(
            f"secret: is not whsec_ and base64 ({error})", code="invalid", status=400
        ) from None


def check_event_types(value: Any) -> list[str]:
    """A list of event types or categories (empty: every event); 400 naming `event_types`."""
    if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
        raise ApplicationError(
            "event_types: must be a list of event types or categories", code="invalid", status=400
        )
    import re

    from events.event_types import EVENT_TYPE_PATTERN

    cleaned = sorted({item.strip() for item in value})
    for item in cleaned:
        if not re.match(EVENT_TYPE_PATTERN, item):
            raise ApplicationError(f"event_types: {item!r} is not an event type", code="invalid", status=400)
    return cleaned


def _is_local_address(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified


def check_url(url: str, *, resolve: bool = True) -> None:
    """Refuse a URL the server must not send to (400 naming `url`): https only unless
    WEBHOOK_ALLOW_HTTP, and never this machine's loopback unless WEBHOOK_ALLOW_LOOPBACK (by name, by
    address, or by what the name resolves to)."""
    config = notify_settings()
    parts = urlsplit(url or "")
    allowed = ("https", "http") if config.webhook_allow_http else ("https",)
    if parts.scheme not in allowed:
        raise ApplicationError(
            f"url: must be an {' or '.join(allowed)} URL"
            + ("" if config.webhook_allow_http else " (https only)"),
            code="invalid",
            status=400,
        )
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        raise ApplicationError("url: has no host", code="invalid", status=400)
    if parts.username or parts.password:
        raise ApplicationError("url: must not carry a user name or password", code="invalid", status=400)
    if config.webhook_allow_loopback:
        return
    if host in _LOOPBACK_NAMES or host.endswith(".localhost") or _is_local_address(host):
        raise ApplicationError("url: must not point to this server's loopback", code="invalid", status=400)
    if resolve:
        try:
            infos = socket.getaddrinfo(host, parts.port or 443, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError):
            return  # not resolvable now: checked again before each send
        if any(_is_local_address(str(info[4][0])) for info in infos):
            raise ApplicationError(
                "url: its host name resolves to this server's loopback", code="invalid", status=400
            )


async def url_refusal(url: str) -> str | None:
    """Why the worker must not send to `url` now (its name may resolve elsewhere than at save), or None."""
    config = notify_settings()
    parts = urlsplit(url)
    if config.webhook_allow_loopback:
        return None
    host = (parts.hostname or "").lower().rstrip(".")
    try:
        check_url(url, resolve=False)
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, parts.port or 443, proto=socket.IPPROTO_TCP
        )
    except ApplicationError as error:
        return error.message
    except OSError:
        return None  # the send fails and is retried like any other failure
    if any(_is_local_address(str(info[4][0])) for info in infos):
        return "url: its host name resolves to this server's loopback"
    return None


# Waking the worker


class DeliverySignal:
    """Wakes the delivery worker after the store commits and after an endpoint changes (thread-safe)."""

    def __init__(self) -> None:
        self._wake: Callable[[], None] | None = None

    def invalidate(self, *args: Any, **kwargs: Any) -> None:
        """An endpoint was saved or deleted (a signal receiver): the worker looks again."""
        if self._wake is not None:
            self._wake()

    def on_commit(self, wake: Callable[[], None] | None) -> None:
        """Call `wake()` after each commit that stored events, and after endpoint changes."""
        self._wake = wake

    def committed(self, last_position: int) -> None:
        """The store's commit listener: there may be events to queue and send."""
        if self._wake is not None:
            self._wake()


delivery_signal = DeliverySignal()


# One signed request


def signed_headers(secret: str, event_id: str, body: bytes, now: datetime | None = None) -> dict[str, str]:
    """The Standard Webhooks headers of `body`, signed with the standardwebhooks library."""
    moment = now or datetime.now(UTC)
    signature = Webhook(secret).sign(msg_id=event_id, timestamp=moment, data=body)
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
        "user-agent": "agent-eventbus-webhooks/1",
    }
