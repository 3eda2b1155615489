"""WebSocket routes: the live event feed and the approval queue (CONTRACT.md, "WebSocket")."""

from django.urls import URLPattern, path

from events.consumers import EventFeedConsumer, install_socket_closer
from hitl.consumers import ApprovalQueueConsumer

websocket_urlpatterns: list[URLPattern] = [
    path("ws/events/", EventFeedConsumer.as_asgi()),
    path("ws/hitl/", ApprovalQueueConsumer.as_asgi()),
]

# Served by this process: sign-outs close the signed-out user's sockets (events.consumers).
install_socket_closer()
