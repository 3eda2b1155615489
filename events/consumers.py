"""WebSocket consumers of the live event feed (`/ws/events/`) and their shared base.

Events reach a connection through the process's live feed (events.live), not through the channel layer:
the feed already holds each stored event once per process, in position order, serialized once. A sign-out
closes the browser sockets of that user (heard on the bus, so in every server process with Redis).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer

from core.async_views import off_shared_thread
from core.errors import ApplicationError
from core.json_input import parse_json

from .base import BaseEvent
from .event_bus import EventBus, event_bus
from .event_types import EventType
from .live import FEED_FILTERS, Listener, live_feed
from .perms import VIEW_EVENTS

logger = logging.getLogger("events")

# Above this many bytes waiting in the server's socket buffer, a client counts as slow: the consumer
# stops writing and lets the connection's bounded queue absorb (and, if it must, overflow into a gap).
TRANSPORT_HIGH_WATER = 256 * 1024
MAX_MESSAGE_BYTES = 64 * 1024
STORED_PAGE = 500

# Close codes (4000-4999 are the application's): the HTTP status they mirror.
CLOSE_BAD_REQUEST = 4400
CLOSE_NOT_AUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403


# The browser sockets this process serves, by username: a sign-out closes them.
_browser_sockets: dict[str, set[LiveConsumer]] = {}


async def close_user_sockets(event: BaseEvent) -> None:
    """A bus subscriber: when someone signs out, close the browser sockets they hold in this process.

    With Redis the sign-out reaches every server process over the distributed bus, so each closes its own.
    """
    if event.replayed:
        return
    username = str(event.data.get("username") or "")
    for consumer in list(_browser_sockets.get(username, ())):
        await consumer.revoke("signed out")


def install_socket_closer(bus: EventBus = event_bus) -> None:
    """Subscribe close_user_sockets to sign-outs on `bus` (once)."""
    if not any(sub.handler is close_user_sockets for sub in bus.subscriptions):
        bus.subscribe(event_type=EventType.OPERATOR_SIGNED_OUT, handler=close_user_sockets)


def transport_backlog(send: Any) -> int | None:
    """Bytes Daphne's socket has not written to the client yet; None under another server (tests)."""
    protocol = getattr(send, "args", (None,))[0]
    transport = getattr(protocol, "transport", None)
    data = getattr(transport, "dataBuffer", None)
    if data is None:
        return None
    return len(data) - int(getattr(transport, "offset", 0)) + int(getattr(transport, "_tempDataLen", 0))


def _has_perm(user: Any, permission: str) -> bool:
    return bool(user is not None and user.is_authenticated and user.is_active and user.has_perm(permission))


class LiveConsumer(AsyncWebsocketConsumer):
    """Accepts, checks who is connecting, parses client messages; subclasses stream and act."""

    # No channel layer: events come from the live feed, sign-outs from the bus. A consumer on the layer
    # would also die with the layer's receive loop whenever Redis goes away.
    channel_layer_alias = "live-feeds-use-no-channel-layer"
    permission = ""
    actions: tuple[str, ...] = ("ping",)

    async def connect(self) -> None:
        self.stream_task: asyncio.Task[None] | None = None
        self.username: str | None = None
        await self.accept()
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.refuse(
                "not_authenticated",
                "sign in (session cookie from this site) or pass ?token=<API token>",
                CLOSE_NOT_AUTHENTICATED,
            )
            return
        if not await off_shared_thread(_has_perm)(user, self.permission):
            await self.refuse(
                "permission_denied", f"this feed needs the {self.permission} permission", CLOSE_FORBIDDEN
            )
            return
        if self.scope.get("auth") == "session":
            self.username = user.get_username()
            _browser_sockets.setdefault(self.username, set()).add(self)
        await self.start()

    async def start(self) -> None:
        """Begin streaming (the connection is accepted and authorized)."""

    async def disconnect(self, code: int) -> None:
        await self.stop_stream()
        self.forget()

    def forget(self) -> None:
        if self.username is not None:
            sockets = _browser_sockets.get(self.username)
            if sockets is not None:
                sockets.discard(self)
                if not sockets:
                    _browser_sockets.pop(self.username, None)
            self.username = None

    async def stop_stream(self) -> None:
        task = getattr(self, "stream_task", None)
        self.stream_task = None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass

    def run_stream(self, coroutine: Any) -> None:
        self.stream_task = asyncio.get_running_loop().create_task(self._guarded(coroutine))

    async def _guarded(self, coroutine: Any) -> None:
        try:
            await coroutine
        except asyncio.CancelledError:
            raise
        except Exception:
            # Never a traceback for the client: say so and close; the server log has the details.
            logger.exception("websocket stream failed")
            await self.send_error("server_error", "the live feed stopped; reconnect to resume")
            await self.close(code=1011)

    async def refuse(self, code: str, detail: str, close_code: int) -> None:
        await self.send_error(code, detail)
        await self.close(code=close_code)

    async def send_json(self, message: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(message, ensure_ascii=False, separators=(",", ":")))

    async def send_error(self, code: str, detail: str, **extra: Any) -> None:
        await self.send_json({"type": "error", "code": code, "detail": detail, **extra})

    async def wait_for_client(self) -> None:
        """Hold the stream while the client has not read what was already written to it."""
        backlog = transport_backlog(self.base_send)
        while backlog is not None and backlog > TRANSPORT_HIGH_WATER:
            await asyncio.sleep(0.02)
            backlog = transport_backlog(self.base_send)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is None:
            await self.send_error("invalid_message", "send JSON text frames, not binary")
            return
        if len(text_data) > MAX_MESSAGE_BYTES:
            await self.send_error("invalid_message", f"a message may be at most {MAX_MESSAGE_BYTES} bytes")
            return
        try:
            # The one JSON entrance: depth, NUL, lone surrogates, NaN, a key twice; the error names the
            # member (`comment`, `modified_args.x`) and the socket stays open.
            message = parse_json(text_data, "message", path="")
        except ApplicationError as error:
            errors = error.extra.get("errors") or [{}]
            syntax = errors[0].get("field") == "message" and "is not valid JSON" in error.message
            await self.send_error("invalid_json" if syntax else error.code, error.message, **error.extra)
            return
        if not isinstance(message, dict):
            await self.send_error("invalid_message", 'a message is a JSON object with an "action"')
            return
        action = message.get("action")
        if action not in self.actions:
            await self.send_error(
                "unknown_action", f"unknown action {action!r}; this feed accepts {', '.join(self.actions)}"
            )
            return
        if action == "ping":
            await self.send_json({"type": "pong"})
            return
        try:
            await self.act(str(action), message)
        except ApplicationError as error:
            await self.send_error(error.code, error.message, **error.extra)
        except Exception:
            # A frame never takes the connection down (no 1011): an error frame, and the next may come.
            logger.exception("websocket: handling a %r message failed", action)
            await self.send_error("server_error", "the server could not handle this message; try again")

    async def act(self, action: str, message: dict[str, Any]) -> None:
        """Handle a valid action other than ping."""

    async def revoke(self, detail: str) -> None:
        """The user signed out: this socket is theirs no more."""
        self.forget()
        await self.stop_stream()
        await self.send_error("not_authenticated", detail)
        await self.close(code=CLOSE_NOT_AUTHENTICATED)


def parse_position(value: Any, name: str = "after") -> int:
    """A position from the query string or a message: a non-negative integer, or ValueError naming it."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a non-negative integer, not {value!r}")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or value < 0 or value > 2**63 - 1:
        raise ValueError(f"{name} must be a non-negative integer, not {value!r}")
    return value


def parse_feed_query(query_string: bytes) -> tuple[dict[str, str], int | None]:
    """The filters and `after` of /ws/events/?...; ValueError naming the parameter that is wrong."""
    from urllib.parse import parse_qs

    from .event_types import EventCategory

    try:
        query = parse_qs(query_string.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"the query string is not valid: {error}") from error
    known = {*FEED_FILTERS, "after", "token"}
    unknown = sorted(set(query) - known)
    if unknown:
        raise ValueError(f"unknown parameter {unknown[0]!r}; filters are {', '.join(FEED_FILTERS)} and after")
    filters: dict[str, str] = {}
    for name in FEED_FILTERS:
        values = query.get(name)
        if not values or not values[-1]:
            continue
        value = values[-1]
        if len(value) > 255 or "\x00" in value:
            raise ValueError(f"{name} must be at most 255 characters, without NUL")
        filters[name] = value
    category = filters.get("event_category")
    categories = [str(member.value) for member in EventCategory]
    if category is not None and category not in categories:
        raise ValueError(f"event_category must be one of {', '.join(categories)}, not {category!r}")
    after = None
    if query.get("after") and query["after"][-1] != "":
        after = parse_position(query["after"][-1])
    return filters, after


def _stored_page(after: int, up_to: int | None, filters: dict[str, str]) -> list[tuple[int, str]]:
    from .live import event_frame
    from .selectors import stored_events_after
    from .store_reader import row_to_event

    rows = stored_events_after(after=after, up_to=up_to, limit=STORED_PAGE, **filters)
    frames = []
    for row in rows:
        event = row_to_event(row)
        event.position = row["position"]
        frames.append((row["position"], event_frame(event)))
    return frames


class EventFeedConsumer(LiveConsumer):
    """/ws/events/: stored events after `after` (if given), then live ones, all matching the filters."""

    permission = VIEW_EVENTS
    actions = ("ping", "resume")

    async def start(self) -> None:
        try:
            self.filters, after = parse_feed_query(bytes(self.scope.get("query_string", b"")))
        except ValueError as error:
            await self.refuse("invalid_filter", str(error), CLOSE_BAD_REQUEST)
            return
        self.run_stream(self.stream(after))

    async def act(self, action: str, message: dict[str, Any]) -> None:
        if action == "resume":
            try:
                after = parse_position(message.get("after"))
            except ValueError as error:
                await self.send_error("invalid_message", str(error))
                return
            await self.stop_stream()
            self.run_stream(self.stream(after))

    async def send_stored(self, after: int, up_to: int | None) -> int:
        """Send the stored events matching the filters in (after, up_to]; the last position sent."""
        page = off_shared_thread(_stored_page)
        while True:
            frames = await page(after, up_to, self.filters)
            for position, frame in frames:
                await self.wait_for_client()
                await self.send(text_data=frame)
                after = position
            if len(frames) < STORED_PAGE:
                return after

    async def stream(self, after: int | None) -> None:
        listener = Listener(filters=self.filters)
        try:
            if after is not None:
                # Catch up first without a live queue (a long catch-up must not overflow it) ...
                after = await self.send_stored(after, None)
            live_from = await live_feed.register(listener)
            if after is not None and after < live_from:
                # ... then what was stored while catching up, up to where the live part begins.
                await self.send_stored(after, live_from)
            covered = live_from  # every matching event up to here was sent
            await self.send_json({"type": "caught_up", "position": covered})
            while True:
                batch = await listener.next_batch()
                for event, frame in batch:
                    position = event.position or 0
                    if position <= covered:
                        continue
                    await self.wait_for_client()
                    await self.send(text_data=frame)
                    covered = position
                if listener.overflowed:
                    live_feed.unregister(listener)
                    await self.send_json({"type": "gap", "after": covered})
                    return
        finally:
            live_feed.unregister(listener)
