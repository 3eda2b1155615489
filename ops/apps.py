from django.apps import AppConfig


class OpsConfig(AppConfig):
    """Running it: health, metrics (the API's and Prometheus's), statistics."""

    name = "ops"
    verbose_name = "Operations"
