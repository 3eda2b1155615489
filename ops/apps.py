from django.apps import AppConfig


class OpsConfig(AppConfig):
    """Running it: health, metrics (the API's and Prometheus's), statistics."""

    name = "ops"
    verbose_name = "Operations"

    def ready(self) -> None:
        from core.asgi_paths import request_observers

        from .metrics import observe_request

        # Requests answered beside Django's cycle (single-event ingest) are in the latency histogram too.
        if observe_request not in request_observers:
            request_observers.append(observe_request)
