from django.apps import AppConfig


class CoreConfig(AppConfig):
    """What every app builds on: errors, the JSON entrance checks."""

    name = "core"
    verbose_name = "Core"
