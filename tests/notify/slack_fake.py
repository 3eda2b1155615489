"""A local fake of Slack's Web API (the server takes it as SLACK_API_URL), and requests signed exactly as
Slack signs its interactions (v0, HMAC-SHA256 of `v0:<timestamp>:<body>` with the signing secret)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode


class FakeSlack:
    """Answers chat.postMessage, chat.update, chat.postEphemeral, views.open, users.info and
    users.lookupByEmail as Slack does (the fields this server reads), and records every call."""

    def __init__(self) -> None:
        self.users: dict[str, dict[str, Any]] = {}  # Slack user id -> {"email", "deleted", "is_bot"}
        self.calls: list[tuple[str, dict[str, Any], str]] = []  # (method, arguments, bearer token)
        self.down = False  # answer 503 to everything
        self.lock = threading.Lock()
        self._ts = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                method = self.path.rsplit("/", 1)[-1]
                if "json" in (self.headers.get("content-type") or ""):
                    arguments = json.loads(body or b"{}")
                else:
                    arguments = {k: v[0] for k, v in parse_qs(body.decode()).items()}
                token = (self.headers.get("authorization") or "").removeprefix("Bearer ")
                status, answer = fake.answer(method, arguments, token)
                content = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json; charset=utf-8")
                self.send_header("content-length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, method: str, arguments: dict[str, Any], token: str) -> tuple[int, dict[str, Any]]:
        if self.down:
            return 503, {"ok": False, "error": "service_unavailable"}
        with self.lock:
            self.calls.append((method, arguments, token))
            if not token.startswith("xoxb-"):
                return 200, {"ok": False, "error": "not_authed"}
            if method == "chat.postMessage":
                self._ts += 1
                channel = arguments.get("channel")
                if channel == "#missing":
                    return 200, {"ok": False, "error": "channel_not_found"}
                return 200, {"ok": True, "channel": "C0APPROVALS", "ts": f"1700000000.{self._ts:06d}"}
            if method in ("chat.update", "chat.postEphemeral", "views.open"):
                return 200, {"ok": True}
            if method == "users.info":
                user = self.users.get(arguments.get("user", ""))
                if user is None:
                    return 200, {"ok": False, "error": "user_not_found"}
                return 200, {"ok": True, "user": {"id": arguments["user"], **_profile(user)}}
            if method == "users.lookupByEmail":
                for user_id, user in self.users.items():
                    if user.get("email", "").lower() == str(arguments.get("email", "")).lower():
                        return 200, {"ok": True, "user": {"id": user_id, **_profile(user)}}
                return 200, {"ok": False, "error": "users_not_found"}
        return 200, {"ok": False, "error": "unknown_method"}

    def called(self, method: str) -> list[dict[str, Any]]:
        with self.lock:
            return [arguments for name, arguments, _ in self.calls if name == method]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _profile(user: dict[str, Any]) -> dict[str, Any]:
    return {
        "deleted": bool(user.get("deleted")),
        "is_bot": bool(user.get("is_bot")),
        "profile": {"email": user["email"]} if user.get("email") else {},
    }


def signed(
    secret: str, payload: Any, *, timestamp: int | None = None, raw: bytes | None = None
) -> dict[str, Any]:
    """The keyword arguments of a test client's POST: Slack's form body and its two signature headers."""
    body = raw if raw is not None else urlencode({"payload": json.dumps(payload)}).encode()
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    base = b"v0:" + stamp.encode() + b":" + body
    signature = "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {
        "data": body,
        "content_type": "application/x-www-form-urlencoded",
        "headers": {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": signature},
    }


def click(action_id: str, call_id: str, *, user: str = "U_ALICE") -> dict[str, Any]:
    """A block_actions payload: `user` clicked a button of a request's message."""
    return {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower(), "team_id": "T1"},
        "trigger_id": "1337.42.abcdef",
        "channel": {"id": "C0APPROVALS"},
        "container": {"type": "message", "channel_id": "C0APPROVALS", "message_ts": "1700000000.000001"},
        "actions": [{"action_id": action_id, "block_id": "hitl_decide", "value": call_id, "type": "button"}],
    }


def submit(callback_id: str, call_id: str, *, user: str = "U_ALICE", **values: str) -> dict[str, Any]:
    """A view_submission payload: `user` submitted a modal with these inputs (block id: value)."""
    return {
        "type": "view_submission",
        "user": {"id": user, "username": user.lower(), "team_id": "T1"},
        "view": {
            "callback_id": callback_id,
            "private_metadata": call_id,
            "state": {
                "values": {
                    block: {"value": {"type": "plain_text_input", "value": v}} for block, v in values.items()
                }
            },
        },
    }
