"""/ws/hitl/: the pending queue, live, and decisions over the socket (CONTRACT.md, "WebSocket").

The queue follows the approval lifecycle's stored events through the process's live feed, so a request
made or decided in any process (another Daphne, an agent runtime through the API, the expiry sweeper)
shows up here.

The request rows are the only authority on what a message says. An event of the lifecycle is only a
hint that a request may have changed: its type and data are never trusted (an agent's token could once
post such events, and a stored event says what someone claimed, not what the row is). Each message
carries the request as it is in the database when the message is sent, and its type follows from that
row's status alone:

- the row is pending: a `request` message (the page treats one for a card it shows as an update);
- the row has left pending: `expired` when it expired, else `decision` (approved, edited, rejected,
  or cancelled by the agent);
- no row with that call_id: nothing.

So an event forged in the lifecycle's name can at most repeat what the rows already say.

Presence (hitl.presence): a client says which requests it has open with `{"action": "viewing",
"call_ids": [...]}`; every connection then gets `{"type": "presence", "call_id", "viewers": [usernames]}`
whenever the people who have that request open change (and, on connecting, for every request someone has
open). It travels over the channel layer's group, on a receive loop of its own: when the layer (Redis)
is away, presence pauses and retries while the queue itself carries on.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from channels.layers import get_channel_layer

from core.async_views import off_shared_thread
from core.errors import ApplicationError
from core.json_input import check_text, invalid, text_problem
from events.base import BaseEvent
from events.consumers import LiveConsumer
from events.event_types import EventType
from events.live import Listener, live_feed

from . import presence
from .inputs import decision_input
from .models import ApprovalStatus, DecisionChannel
from .selectors import VIEW_PERMISSION, approval_as_dict, approvals_by_call_id, pending_approvals
from .services import approval_decide

logger = logging.getLogger("hitl")

LIFECYCLE_EVENTS = (
    str(EventType.TOOL_APPROVAL_REQUIRED),
    str(EventType.HITL_DECISION_MADE),
    str(EventType.TOOL_APPROVAL_CANCELLED),
    # Still pending, but changed: one approval of several, handed to another group.
    "hitl_approval_recorded",
    "tool_approval_escalated",
    # Still pending, about to expire (notify's warning): the card pulses.
    "tool_approval_expiring",
)
MAX_CALL_ID = 255


def _decide(
    *, user: Any, call_id: str, decision: str, modified_args: Any, comment: str, remember: Any = None
) -> dict[str, Any]:
    request = approval_decide(
        call_id=call_id,
        user=user,
        decision=decision,
        modified_args=modified_args,
        comment=comment,
        channel=DecisionChannel.WEBSOCKET,
        remember=remember,
    )
    return approval_as_dict(request)


def event_call_id(event: BaseEvent) -> str | None:
    """The call_id an event names, if it names one that could be a request's (else None)."""
    data = event.data if isinstance(event.data, dict) else {}
    call_id = data.get("call_id")
    if not isinstance(call_id, str) or not call_id or len(call_id) > MAX_CALL_ID:
        return None
    return call_id


def message_for(event_type: str, approval: dict[str, Any]) -> dict[str, Any] | None:
    """The queue message for a lifecycle event, from the request row as it is now (None: say nothing).

    Only the row's status chooses the message; the event's type merely spares a message the client
    never needs (a request that is already decided: its decision's own message says so).
    """
    status = approval.get("status")
    if status == ApprovalStatus.PENDING and event_type == "tool_approval_expiring":
        return {"type": "expiring", **approval}
    if status == ApprovalStatus.PENDING:
        return {"type": "request", **approval}
    if event_type == EventType.TOOL_APPROVAL_REQUIRED:
        return None
    if status == ApprovalStatus.EXPIRED:
        return {"type": "expired", **approval}
    return {"type": "decision", **approval}


class ApprovalQueueConsumer(LiveConsumer):
    """Operators' live queue: a snapshot of what is pending, then every change; and the decide action."""

    permission = VIEW_PERMISSION
    actions = ("ping", "decide", "viewing")

    async def start(self) -> None:
        self.presence_key = uuid.uuid4().hex
        self.presence_seq = 0
        self.presence_channel: str | None = None
        self.viewing: frozenset[str] = frozenset()
        self.told: dict[str, list[str]] = {}
        self.viewer = await off_shared_thread(_username)(self.scope["user"])
        self.run_stream(self.stream())
        self.presence_task: asyncio.Task[None] | None = asyncio.get_running_loop().create_task(
            self.presence_loop()
        )

    async def disconnect(self, code: int) -> None:
        await self.leave_presence()
        await super().disconnect(code)

    async def revoke(self, detail: str) -> None:
        await self.leave_presence()
        await super().revoke(detail)

    async def send_snapshot(self) -> None:
        pending = await off_shared_thread(pending_approvals)()
        await self.send_json({"type": "snapshot", "pending": pending})

    async def stream(self) -> None:
        listener = Listener(event_types=LIFECYCLE_EVENTS)
        load = off_shared_thread(approvals_by_call_id)
        try:
            # Registered before the snapshot is read: a change after it still arrives (maybe twice).
            await live_feed.register(listener)
            await self.send_snapshot()
            while True:
                batch = await listener.next_batch()
                if listener.overflowed:
                    # Fell behind: a fresh snapshot says everything the dropped messages would have.
                    listener.overflowed = False
                    await self.send_snapshot()
                    continue
                call_ids = [event_call_id(event) for event, _ in batch]
                wanted = [call_id for call_id in call_ids if call_id is not None]
                if not wanted:
                    continue
                approvals = await load(call_ids=wanted)
                sent: set[tuple[str, str]] = set()
                for (event, _), call_id in zip(batch, call_ids, strict=True):
                    approval = approvals.get(call_id) if call_id is not None else None
                    if approval is None:
                        continue  # no such request: whatever the event claims, there is nothing to show
                    message = message_for(event.event_type, approval)
                    if message is None or (message["type"], approval["call_id"]) in sent:
                        continue  # one message per request and kind per batch: the row is the same
                    sent.add((message["type"], approval["call_id"]))
                    await self.wait_for_client()
                    await self.send_json(message)
        finally:
            live_feed.unregister(listener)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        # A frame never takes the connection down (an exception here would close it with 1011): whatever
        # goes wrong, the client gets an error frame and may send the next one.
        try:
            await super().receive(text_data=text_data, bytes_data=bytes_data)
        except ApplicationError as error:
            await self.send_error(error.code, error.message, **(error.extra or {}))
        except Exception:
            logger.exception("/ws/hitl/: handling a frame failed")
            await self.send_error("server_error", "the server could not handle this message; try again")

    async def act(self, action: str, message: dict[str, Any]) -> None:
        if action == "viewing":
            self.viewing = frozenset(check_viewing(message))
            await self.announce()
            return
        if action == "decide":
            try:
                await self.decide(message)
            except ApplicationError as error:
                await self.send_error(error.code, error.message, **_error_extra(message, error))

    async def decide(self, message: dict[str, Any]) -> None:
        call_id, decision, modified_args, comment = check_decide(message)
        remember = decide_remember(message)
        try:
            request = await off_shared_thread(_decide)(
                user=self.scope["user"],
                call_id=call_id,
                decision=decision,
                modified_args=modified_args,
                comment=comment,
                remember=remember,
            )
        except ApplicationError as error:
            await self.send_error(error.code, error.message, call_id=call_id, **error.extra)
            return
        await self.send_json({"type": "decided", "call_id": call_id, "request": request})

    # Presence

    async def presence_loop(self) -> None:
        """Tell the client who has what open now, then follow the group (rejoining after a failure)."""
        await self.tell(presence.board.watched())
        refresher = asyncio.get_running_loop().create_task(self.refresh_presence())
        try:
            layer = get_channel_layer()
            if layer is None:
                await refresher
                return
            delay = 1.0
            while True:
                try:
                    channel = await layer.new_channel()
                    await layer.group_add(presence.PRESENCE_GROUP, channel)
                    self.presence_channel = channel
                    if self.viewing:
                        await self.announce()  # rejoined: say again what is open here
                    delay = 1.0
                    while True:
                        await self.presence_heard(await layer.receive(channel))
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.warning("/ws/hitl/: presence lost the channel layer; retrying", exc_info=True)
                    self.presence_channel = None
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
        finally:
            refresher.cancel()

    async def refresh_presence(self) -> None:
        """Repeat this connection's report (others forget silent ones) and drop the stale."""
        while True:
            await asyncio.sleep(presence.REFRESH_S)
            if self.viewing:
                await self.announce()
            presence.board.prune()
            await self.tell(set(self.told))

    async def announce(self) -> None:
        """Record what this connection has open, here and (over the layer) in every process."""
        self.presence_seq += 1
        report = {
            "type": "presence.report",
            "key": self.presence_key,
            "username": self.viewer,
            "call_ids": sorted(self.viewing),
            "seq": self.presence_seq,
        }
        touched = presence.board.apply(
            key=self.presence_key, username=self.viewer, call_ids=self.viewing, seq=self.presence_seq
        )
        await self.tell(touched)
        await _group_send(report)

    async def presence_heard(self, message: dict[str, Any]) -> None:
        """A report from the group (maybe this connection's own, or one already applied here)."""
        if message.get("type") != "presence.report":
            return
        call_ids = [c for c in message.get("call_ids") or [] if isinstance(c, str)][: presence.MAX_VIEWING]
        key, username, seq = message.get("key"), message.get("username"), message.get("seq")
        if not isinstance(key, str) or not isinstance(username, str) or not isinstance(seq, int):
            return
        presence.board.apply(key=key, username=username, call_ids=call_ids, seq=seq)
        # The board is shared by this process's connections: whoever applied first saw the change, so
        # each compares with what it told its own client instead.
        await self.tell(set(call_ids) | set(self.told))

    async def tell(self, call_ids: Any) -> None:
        """Send the client the viewers of each of these requests that changed since it was last told."""
        for call_id in sorted(call_ids):
            viewers = presence.board.viewers(call_id)
            if viewers == self.told.get(call_id, []):
                continue
            if viewers:
                self.told[call_id] = viewers
            else:
                self.told.pop(call_id, None)
            await self.send_json({"type": "presence", "call_id": call_id, "viewers": viewers})

    async def leave_presence(self) -> None:
        """The socket closes: stop following, and tell everyone this viewer has nothing open any more."""
        task = getattr(self, "presence_task", None)
        if task is None:
            return
        self.presence_task = None
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):
            pass
        self.presence_seq += 1
        presence.board.apply(key=self.presence_key, username=self.viewer, call_ids=[], seq=self.presence_seq)
        report = {
            "type": "presence.report",
            "key": self.presence_key,
            "username": self.viewer,
            "call_ids": [],
            "seq": self.presence_seq,
        }
        await _group_send(report)
        layer = get_channel_layer()
        if layer is not None and self.presence_channel is not None:
            try:
                leaving = layer.group_discard(presence.PRESENCE_GROUP, self.presence_channel)
                await asyncio.wait_for(leaving, 2.0)
            except Exception:
                logger.warning("/ws/hitl/: could not leave the presence group", exc_info=True)


def _username(user: Any) -> str:
    return str(user.get_username())


async def _group_send(report: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        await asyncio.wait_for(layer.group_send(presence.PRESENCE_GROUP, report), 2.0)
    except Exception:
        # Presence is a courtesy: the other processes catch up with the next refresh.
        logger.warning("/ws/hitl/: could not share presence over the channel layer", exc_info=True)


def check_viewing(message: dict[str, Any]) -> list[str]:
    """The call_ids of a viewing frame: a list of at most MAX_VIEWING call ids (400 naming the field)."""
    call_ids = message.get("call_ids")
    if not isinstance(call_ids, list):
        raise invalid("call_ids", "must be a list of call ids (empty: nothing open)")
    if len(call_ids) > presence.MAX_VIEWING:
        raise invalid("call_ids", f"at most {presence.MAX_VIEWING} call ids at once, not {len(call_ids)}")
    return [
        check_text(call_id, f"call_ids[{index}]", max_length=MAX_CALL_ID, required=True)
        for index, call_id in enumerate(call_ids)
    ]


def _error_extra(message: dict[str, Any], error: ApplicationError) -> dict[str, Any]:
    """The error frame's extra fields: the call_id when it is one this server could show, and the
    error's own (`errors`, naming the field)."""
    extra: dict[str, Any] = dict(error.extra or {})
    call_id = message.get("call_id")
    if isinstance(call_id, str) and len(call_id) <= MAX_CALL_ID and not text_problem(call_id):
        extra.setdefault("call_id", call_id)
    return extra


def check_decide(message: dict[str, Any]) -> tuple[str, str, dict[str, Any] | None, str]:
    """The fields of a decide frame, checked as every JSON entrance checks them; else ApplicationError
    (400 `invalid`, naming the field)."""
    call_id = check_text(message.get("call_id"), "call_id", max_length=MAX_CALL_ID, required=True)
    if call_id != call_id.strip():
        raise invalid("call_id", "has leading or trailing spaces")
    decided = decision_input(
        {key: message[key] for key in ("decision", "modified_args", "comment") if key in message}
    )
    return call_id, decided["decision"], decided["modified_args"], decided["comment"]


def decide_remember(message: dict[str, Any]) -> dict[str, Any] | None:
    """A decide frame's `remember`, checked like the other surfaces' (400 naming the field)."""
    if "remember" not in message:
        return None
    return decision_input({"decision": "APPROVE", "remember": message["remember"]})["remember"]
