"""The SQLite backend (core.sqlite3) keeps closed connections for the next connect, when they are clean,
and only for the file they were opened on."""

import os

import pytest
from django.db import connection

from core.sqlite3.base import DatabaseWrapper, idle_connections

pytestmark = pytest.mark.django_db  # pytest-django lets tests marked so open connections at all


@pytest.fixture
def wrapper(tmp_path):
    """A wrapper of its own on a file of its own (the project's SQLite options), and its idle list emptied."""
    settings_dict = {
        **connection.settings_dict,
        "ENGINE": "core.sqlite3",
        "NAME": str(tmp_path / "reuse.sqlite3"),
        "OPTIONS": {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        },
    }
    db = DatabaseWrapper(settings_dict, alias="reuse-test")
    with db.cursor() as cursor:
        cursor.execute("CREATE TABLE t (x INTEGER)")
    yield db
    db.close()
    idle_connections.close_all()


def rows(db) -> list[int]:
    with db.cursor() as cursor:
        cursor.execute("SELECT x FROM t ORDER BY x")
        return [row[0] for row in cursor.fetchall()]


def test_a_closed_connection_is_the_next_one(wrapper):
    first = wrapper.connection
    wrapper.close()
    assert wrapper.connection is None
    wrapper.ensure_connection()
    assert wrapper.connection is first
    assert wrapper.connection.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_a_connection_with_foreign_keys_off_is_not_kept(wrapper):
    with wrapper.constraint_checks_disabled():
        off = wrapper.connection
        wrapper.close()  # as a connection closed inside loaddata would be
    wrapper.ensure_connection()
    assert wrapper.connection is not off
    assert wrapper.connection.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    with wrapper.constraint_checks_disabled():
        pass
    on = wrapper.connection
    wrapper.close()
    wrapper.ensure_connection()
    assert wrapper.connection is on


def test_an_open_transaction_is_rolled_back_before_the_connection_is_kept(wrapper):
    wrapper.set_autocommit(False)
    with wrapper.cursor() as cursor:
        cursor.execute("INSERT INTO t (x) VALUES (1)")
    assert wrapper.connection.in_transaction
    kept = wrapper.connection
    wrapper.close()
    wrapper.ensure_connection()
    assert wrapper.connection is kept and not kept.in_transaction and wrapper.get_autocommit()
    assert rows(wrapper) == []
    with wrapper.cursor() as cursor:
        cursor.execute("INSERT INTO t (x) VALUES (2)")  # autocommit again: committed at once
    assert rows(wrapper) == [2]


def test_a_connection_closed_inside_atomic_or_after_an_error_is_not_kept(wrapper):
    wrapper.in_atomic_block = True  # as inside atomic(): Django keeps using the closed connection
    inside = wrapper.connection
    wrapper.close()
    wrapper.in_atomic_block = False
    wrapper.connection = None
    wrapper.ensure_connection()
    assert wrapper.connection is not inside
    erring = wrapper.connection
    wrapper.errors_occurred = True
    wrapper.close()
    wrapper.ensure_connection()
    assert wrapper.connection is not erring


def test_a_database_created_again_at_the_same_path_gets_a_new_connection(wrapper, tmp_path):
    with wrapper.cursor() as cursor:
        cursor.execute("INSERT INTO t (x) VALUES (1)")
    old = wrapper.connection
    wrapper.close()
    path = wrapper.settings_dict["NAME"]
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    fresh = DatabaseWrapper({**wrapper.settings_dict}, alias="reuse-test-2")
    with fresh.cursor() as cursor:
        cursor.execute("CREATE TABLE t (x INTEGER)")
    fresh.close()
    wrapper.ensure_connection()
    assert wrapper.connection is not old
    assert rows(wrapper) == []  # the new file's table, not the old one's row


def test_an_in_memory_database_is_never_kept():
    settings_dict = {**connection.settings_dict, "ENGINE": "core.sqlite3", "NAME": ":memory:", "OPTIONS": {}}
    db = DatabaseWrapper(settings_dict, alias="memory")
    assert db.is_in_memory_db()
    db.ensure_connection()
    raw = db.connection
    db._close()  # what close() would do, were closing an in-memory database not refused
    db.connection = None
    db.ensure_connection()
    assert db.connection is not raw
