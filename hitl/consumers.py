"""/ws/hitl/: the pending queue, live, and decisions over the socket (CONTRACT.md, "WebSocket").

The queue follows the approval lifecycle's stored events through the process's live feed, so a request
made or decided in any process (another Daphne, an agent runtime through the API, the expiry sweeper)
shows up here; each message carries the request as it is in the database when the message is sent.
"""

from __future__ import annotations

from typing import Any

from eventbus_project.async_views import off_shared_thread
from eventbus_project.exceptions import ApplicationError
from events.consumers import LiveConsumer
from events.event_types import EventType
from events.live import Listener, live_feed

from .models import ApprovalStatus, DecisionChannel
from .selectors import VIEW_PERMISSION, approval_as_dict, approvals_by_call_id, pending_approvals
from .services import approval_decide

LIFECYCLE_EVENTS = (
    str(EventType.TOOL_APPROVAL_REQUIRED),
    str(EventType.HITL_DECISION_MADE),
    str(EventType.TOOL_APPROVAL_CANCELLED),
)
MAX_COMMENT = 10_000


def _decide(*, user: Any, call_id: str, decision: str, modified_args: Any, comment: str) -> dict[str, Any]:
    request = approval_decide(
        call_id=call_id,
        user=user,
        decision=decision,
        modified_args=modified_args,
        comment=comment,
        channel=DecisionChannel.WEBSOCKET,
    )
    return approval_as_dict(request)


def message_for(event_type: str, expired: bool, approval: dict[str, Any]) -> dict[str, Any] | None:
    """The queue message a lifecycle event becomes, given the request as it is now (None: say nothing)."""
    if event_type == EventType.TOOL_APPROVAL_REQUIRED:
        # Decided already: the decision's own message follows; the client never needs this one.
        return {"type": "request", **approval} if approval["status"] == ApprovalStatus.PENDING else None
    if expired or approval["status"] == ApprovalStatus.EXPIRED:
        return {"type": "expired", **approval}
    return {"type": "decision", **approval}


class ApprovalQueueConsumer(LiveConsumer):
    """Operators' live queue: a snapshot of what is pending, then every change; and the decide action."""

    permission = VIEW_PERMISSION
    actions = ("ping", "decide")

    async def start(self) -> None:
        self.run_stream(self.stream())

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
                call_ids = [str(event.data.get("call_id") or "") for event, _ in batch]
                approvals = await load(call_ids=call_ids)
                for (event, _), call_id in zip(batch, call_ids, strict=True):
                    approval = approvals.get(call_id)
                    if approval is None:
                        continue
                    message = message_for(event.event_type, bool(event.data.get("expired")), approval)
                    if message is not None:
                        await self.wait_for_client()
                        await self.send_json(message)
        finally:
            live_feed.unregister(listener)

    async def act(self, action: str, message: dict[str, Any]) -> None:
        if action == "decide":
            await self.decide(message)

    async def decide(self, message: dict[str, Any]) -> None:
        call_id = message.get("call_id")
        if not isinstance(call_id, str) or not call_id:
            await self.send_error("invalid", "call_id must be a non-empty string", call_id=call_id)
            return
        decision = message.get("decision")
        modified_args = message.get("modified_args")
        comment = message.get("comment") or ""
        if not isinstance(decision, str):
            await self.send_error("invalid", "decision must be APPROVE, EDIT or REJECT", call_id=call_id)
            return
        if modified_args is not None and not isinstance(modified_args, dict):
            await self.send_error("invalid", "modified_args must be a JSON object or null", call_id=call_id)
            return
        if not isinstance(comment, str) or len(comment) > MAX_COMMENT:
            await self.send_error(
                "invalid", f"comment must be text of at most {MAX_COMMENT} characters", call_id=call_id
            )
            return
        try:
            request = await off_shared_thread(_decide)(
                user=self.scope["user"],
                call_id=call_id,
                decision=decision,
                modified_args=modified_args,
                comment=comment,
            )
        except ApplicationError as error:
            await self.send_error(error.code, error.message, call_id=call_id, **error.extra)
            return
        await self.send_json({"type": "decided", "call_id": call_id, "request": request})
