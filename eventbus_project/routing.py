"""WebSocket routes (the live feeds come with the live issue)."""

from django.urls import URLPattern

websocket_urlpatterns: list[URLPattern] = []
