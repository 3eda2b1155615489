"""Fixtures shared by every test: a fresh bus per test, and services that are required in CI."""

import os

import pytest
from django.conf import settings
from django.db import connection

from audit.subscribers import audit_logger, install_subscribers, metrics_collector
from events.event_bus import event_bus

REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES", "") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests whose service is not configured, unless REQUIRE_SERVICES=1 says they must run."""
    available = {
        "postgres": connection.vendor == "postgresql",
        "redis": bool(settings.REDIS_URL),
    }
    for item in items:
        for marker, present in available.items():
            if item.get_closest_marker(marker) is None or present:
                continue
            if REQUIRE_SERVICES:
                raise pytest.UsageError(
                    f"{item.nodeid} needs {marker}, which REQUIRE_SERVICES=1 demands but is not configured"
                )
            item.add_marker(pytest.mark.skip(reason=f"needs {marker}: set DATABASE_URL/REDIS_URL"))


@pytest.fixture(autouse=True)
def fresh_bus():
    """Every test starts with the app's bus as at start-up: the default subscribers, nothing queued."""
    event_bus.reset()
    metrics_collector.reset()
    audit_logger.reset()
    install_subscribers(event_bus)
    yield event_bus
    event_bus.reset()
    install_subscribers(event_bus)
