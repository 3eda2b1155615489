"""Fixtures shared by every test: a fresh bus per test, the store where a test has a database, and
services that are required in CI."""

import os

import pytest
from django.conf import settings
from django.contrib.auth.hashers import get_hashers, get_hashers_by_algorithm
from django.db import connection

from audit.subscribers import install_subscribers
from events.db_triggers import PERMIT_TABLE
from events.distributed_event_bus import make_distributed
from events.event_bus import event_bus
from events.event_store import event_store
from hitl.services import decision_waiters

REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES", "") == "1"

pytest_plugins = ["tests.live_hitl_server"]  # `daphne_server`: one Daphne for every module that asks

# Passwords hashed in this process cost ~0.3 s each with the real PBKDF2; tests create and sign in people
# by the hundred. No test checks the hasher; the servers the e2e tests start keep the real settings.
settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
get_hashers.cache_clear()  # type: ignore[attr-defined]  # an lru_cache in Django
get_hashers_by_algorithm.cache_clear()  # type: ignore[attr-defined]

if settings.REDIS_URL:
    # Pub/Sub channels ignore the database number: this session gets a channel of its own, so test runs
    # sharing a Redis never hear each other. The servers and scripts the tests start inherit it.
    TEST_REDIS_CHANNEL = f"eventbus:test:{os.getpid()}"
    os.environ["EVENT_BUS_REDIS_CHANNEL"] = TEST_REDIS_CHANNEL
    settings.EVENT_BUS["REDIS_CHANNEL"] = TEST_REDIS_CHANNEL
    make_distributed(event_bus, settings.REDIS_URL, channel=TEST_REDIS_CHANNEL)  # made at start-up


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


def _flush_with_permit(original):
    """Let the test runner's flush empty the append-only tables, the way a purge does: with a permit."""

    def sql_flush(self, style, tables, *, reset_sequences=False, allow_cascade=False):
        statements = original(
            self, style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade
        )
        if PERMIT_TABLE not in tables:
            return statements
        permit_delete = [s for s in statements if PERMIT_TABLE in s and "TRUNCATE" not in s.upper()]
        others = [s for s in statements if s not in permit_delete]
        grant = f"INSERT INTO {PERMIT_TABLE} (granted_at, reason) VALUES (CURRENT_TIMESTAMP, 'test flush')"
        return [grant, *others, *permit_delete]

    return sql_flush


@pytest.fixture(scope="session", autouse=True)
def _append_only_tables_flushable():
    ops_class = type(connection.ops)
    original = ops_class.sql_flush
    ops_class.sql_flush = _flush_with_permit(original)  # type: ignore[method-assign]
    yield
    ops_class.sql_flush = original  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def fresh_bus(request: pytest.FixtureRequest):
    """Every test starts with a bus as at start-up: a test with a transactional database gets the store
    (it writes from its own thread, which needs committed data); other tests get a bare bus."""
    marker = request.node.get_closest_marker("django_db")
    with_store = marker is not None and marker.kwargs.get("transaction", False)
    event_bus.reset()
    event_store.reset_stats()
    decision_waiters.subscribe(event_bus)
    if with_store:
        install_subscribers(event_bus)
    yield event_bus
    if with_store:
        event_bus.drain_sync(timeout=10)
        event_store.close_connection_sync()
    event_bus.reset()
