"""The ASGI application, served by Daphne: Django for HTTP, Channels for WebSockets."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "eventbus_project.settings")
# Set up Django (apps, settings) before anything imports models.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from events.lifecycle import install_server_hooks  # noqa: E402
from hitl.longpoll import long_poll_app  # noqa: E402

from .backpressure import paced  # noqa: E402
from .routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        # Daphne serves no static files itself; the admin's CSS and JS come through Django's handler.
        # Agents' Bearer long-polls are answered without Django's per-request thread (hitl.longpoll).
        # Streamed responses wait for slow clients instead of piling up in memory (backpressure).
        "http": paced(long_poll_app(ASGIStaticFilesHandler(django_asgi_app))),  # type: ignore[arg-type]
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)

install_server_hooks()
