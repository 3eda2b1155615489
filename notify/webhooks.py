"""Webhooks: the endpoint rules (https, no loopback, a usable secret), the outbox batch hook, and the
signed request of one delivery.

The outbox. `outbox_record_events` is a batch hook of the event store: it runs inside the transaction
that stores the events (the writer's batches and `events_record` in a caller's transaction alike) and
inserts one `WebhookDelivery` row per (enabled matching endpoint, stored event), so an event and its
deliveries commit together or not at all. The endpoints are cached in memory (reloaded after a change
in this process, and at least every ENDPOINT_CACHE_S for changes made by other processes), so the hook
costs no query on the ingest path.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from django.db.backends.utils import CursorWrapper
from standardwebhooks import Webhook

from core.errors import ApplicationError
from events.base import BaseEvent
from events.bulk import bulk_insert, datetime_adapter
from events.event_types import EventCategory

from .conf import notify_settings

ENDPOINT_CACHE_S = 5.0
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


# The endpoint cache and the outbox hook


@dataclass(frozen=True)
class CachedEndpoint:
    id: int
    everything: bool
    names: frozenset[str]

    def matches(self, event_type: str, event_category: str) -> bool:
        return self.everything or event_type in self.names or event_category in self.names


class EndpointCache:
    """The enabled endpoints, in memory for the store's hook; wakes the delivery worker after commits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._endpoints: list[CachedEndpoint] | None = None
        self._loaded_at = 0.0
        self._wake: Callable[[], None] | None = None

    def invalidate(self, *args: Any, **kwargs: Any) -> None:
        """Forget the endpoints (a signal receiver: an endpoint was saved or deleted)."""
        with self._lock:
            self._endpoints = None
        if self._wake is not None:
            self._wake()

    def endpoints(self, cursor: CursorWrapper) -> list[CachedEndpoint]:
        """The enabled endpoints, read with `cursor` (in the caller's transaction) when stale."""
        endpoints = self._endpoints
        if endpoints is not None and time.monotonic() - self._loaded_at < ENDPOINT_CACHE_S:
            return endpoints
        import json

        cursor.execute("SELECT id, event_types FROM notify_webhookendpoint WHERE enabled ORDER BY id")
        loaded = []
        for endpoint_id, raw in cursor.fetchall():
            names = raw if isinstance(raw, list) else json.loads(raw or "[]")
            loaded.append(CachedEndpoint(id=endpoint_id, everything=not names, names=frozenset(names)))
        with self._lock:
            self._endpoints = loaded
            self._loaded_at = time.monotonic()
        return loaded

    def on_commit(self, wake: Callable[[], None] | None) -> None:
        """Call `wake()` (thread-safe) after each commit that stored events, and after endpoint changes."""
        self._wake = wake

    def committed(self, last_position: int) -> None:
        """The store's commit listener: deliveries may be waiting."""
        if self._wake is not None:
            self._wake()


endpoint_cache = EndpointCache()


def outbox_record_events(cursor: CursorWrapper, events: list[BaseEvent]) -> None:
    """Batch hook of the event store: one outbox row per (enabled matching endpoint, stored event)."""
    endpoints = endpoint_cache.endpoints(cursor)
    if not endpoints:
        return
    now = datetime_adapter()(datetime.now(UTC))
    rows = []
    for event in events:
        event_type = str(event.event_type)
        category = str(event.event_category)
        for endpoint in endpoints:
            if endpoint.matches(event_type, category):
                rows.append((endpoint.id, event.position, event.event_id, event_type, now, 0, ""))
    if rows:
        bulk_insert(cursor, "notify_webhookdelivery", DELIVERY_COLUMNS, rows)


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
