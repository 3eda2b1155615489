"""The WebSocket origin check compares scheme, host and port (CONTRACT.md, "The trust boundary"), as
Django's CSRF origin check does for HTTP."""

import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client, override_settings

from accounts.services import api_token_issue
from accounts.websocket_auth import origin_allowed
from eventbus_project.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)

SERVER = b"127.0.0.1:8000"


def scope(host: str | None = "127.0.0.1:8000", scheme: str = "ws", **extra) -> dict:
    headers = [(b"host", host.encode())] if host is not None else []
    headers += [(name.encode(), value.encode()) for name, value in extra.pop("headers", {}).items()]
    return {"type": "websocket", "scheme": scheme, "headers": headers, **extra}


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("http://127.0.0.1:8000", True),
        ("http://127.0.0.1:9999", False),  # another port: another origin
        ("https://127.0.0.1:8000", False),  # another scheme
        ("http://127.0.0.1", False),  # port 80
        ("http://localhost:8000", False),  # an allowed host, but not the one this socket was opened on
        ("http://evil.example", False),
        ("http://127.0.0.1:8000.evil.example", False),
        ("null", False),
        ("", False),
        ("http://[::1", False),  # not even a URL
    ],
)
def test_the_origin_must_be_the_servers_own(origin, allowed):
    assert origin_allowed(scope(), origin) is allowed


def test_the_scheme_follows_the_connection():
    assert origin_allowed(scope(scheme="wss"), "https://127.0.0.1:8000")
    assert not origin_allowed(scope(scheme="wss"), "http://127.0.0.1:8000")


def test_a_host_outside_allowed_hosts_is_nobodys_origin():
    assert not origin_allowed(scope(host="evil.example"), "http://evil.example")


def test_without_a_host_header_the_listening_address_is_the_server():
    assert origin_allowed(scope(host=None, server=("127.0.0.1", 8000)), "http://127.0.0.1:8000")
    assert not origin_allowed(scope(host=None, server=("127.0.0.1", 8000)), "http://127.0.0.1:9999")
    assert not origin_allowed(scope(host=None), "http://127.0.0.1:8000")


@override_settings(SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https"), ALLOWED_HOSTS=["example.com"])
def test_behind_a_tls_proxy_the_forwarded_scheme_counts():
    forwarded = scope(host="example.com", headers={"x-forwarded-proto": "https"})
    assert origin_allowed(forwarded, "https://example.com")
    assert not origin_allowed(forwarded, "http://example.com")
    assert origin_allowed(scope(host="example.com"), "http://example.com")  # no header: the connection's


@override_settings(
    CSRF_TRUSTED_ORIGINS=["https://console.example.com", "https://*.corp.example"],
)
def test_csrf_trusted_origins_are_allowed_exactly():
    assert origin_allowed(scope(), "https://console.example.com")
    assert not origin_allowed(scope(), "http://console.example.com")
    assert not origin_allowed(scope(), "https://console.example.com:8443")
    assert origin_allowed(scope(), "https://ops.corp.example")
    assert not origin_allowed(scope(), "http://ops.corp.example")
    assert not origin_allowed(scope(), "https://corp.example.evil")


@database_sync_to_async
def _session_cookie() -> bytes:
    from accounts.services import roles_setup

    roles_setup()
    user = get_user_model().objects.create_user("carol", password="pw-12345-xyz")
    user.groups.add(Group.objects.get(name="auditors"))
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


def connect(headers: list) -> WebsocketCommunicator:
    return WebsocketCommunicator(application, "/ws/events/", headers=headers)


@pytest.mark.parametrize("origin", [b"http://127.0.0.1:9999", b"https://127.0.0.1:8000"])
async def test_a_session_from_another_port_or_scheme_is_refused_at_the_handshake(origin):
    cookie = await _session_cookie()
    ws = connect([(b"cookie", cookie), (b"origin", origin), (b"host", SERVER)])
    connected, _ = await ws.connect()
    assert not connected


async def test_a_session_from_the_servers_own_origin_is_accepted():
    cookie = await _session_cookie()
    ws = connect([(b"cookie", cookie), (b"origin", b"http://127.0.0.1:8000"), (b"host", SERVER)])
    connected, _ = await ws.connect()
    assert connected
    first = json.loads(await ws.receive_from(5))
    assert first["type"] == "caught_up", first
    await ws.disconnect()


async def test_a_token_without_an_origin_still_connects():
    token = await database_sync_to_async(lambda: api_token_issue(username="ada", group="auditors").token)()
    ws = WebsocketCommunicator(application, f"/ws/events/?token={token}", headers=[(b"host", SERVER)])
    connected, _ = await ws.connect()
    assert connected
    assert json.loads(await ws.receive_from(5))["type"] == "caught_up"
    await ws.disconnect()


async def test_a_token_with_a_foreign_origin_is_refused():
    token = await database_sync_to_async(lambda: api_token_issue(username="ada", group="auditors").token)()
    ws = WebsocketCommunicator(
        application,
        f"/ws/events/?token={token}",
        headers=[(b"host", SERVER), (b"origin", b"http://127.0.0.1:9999")],
    )
    connected, _ = await ws.connect()
    assert not connected
