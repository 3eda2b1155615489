"""SQLite with one writer at a time per process, queued in Python rather than in SQLite's busy handler.

SQLite has one writer. When several threads of this process (the event store's writer, sync views,
commands) start write transactions at once, SQLite's busy handler lets them retry with growing sleeps,
and one that keeps losing the race fails with "database is locked" after the timeout. Here every
transaction (BEGIN IMMEDIATE, see settings) first takes a per-database lock in Python, which threads
wait on in turn, so inside one process that error cannot happen; the lock is released on commit or
rollback. Several processes on one SQLite file still share SQLite's own lock: run PostgreSQL for that.

Connections are also kept for reuse. Under ASGI every worker-thread call (async views, the agents' fast
paths, the notifiers) closes its connection at the end, and a new SQLite connection costs 1-2 ms before
its first answer: opening the file, Django's functions and pragmas, and parsing the whole schema again
on the first statement (docs/benchmarks.md, `policy_decide.py`). So a closed connection that is idle
(no transaction, no error seen) goes back to a small per-file list and the next connect takes it, as
PostgreSQL's pool does. A kept connection is used by one wrapper at a time, and only while the path
still names the same file (an identity check: a database deleted and created again is never served by
a connection to the old one). In-memory databases are never kept (closing one destroys it).
"""

from __future__ import annotations

import atexit
import os
import sqlite3
import threading
from typing import Any

from django.db import OperationalError
from django.db.backends.sqlite3 import base

WRITE_LOCK_TIMEOUT_S = 60.0
# Idle connections kept per file: beyond this many, a closed connection is really closed. A process has
# a handful of worker threads querying at once (the default executor's, the store writer's).
MAX_IDLE_PER_FILE = 8
_locks: dict[str, threading.RLock] = {}
_locks_guard = threading.Lock()

FileIdentity = tuple[int, int]  # (st_dev, st_ino) of the database file


def _file_identity(path: str) -> FileIdentity | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


class _IdleConnections:
    """Closed connections ready to be reused, per database file, with the identity of their file."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[str, list[tuple[sqlite3.Connection, FileIdentity]]] = {}

    def take(self, path: str) -> tuple[sqlite3.Connection, FileIdentity] | None:
        """An idle connection to the file now at `path`; those to a file since replaced are closed."""
        current = _file_identity(path)
        stale: list[sqlite3.Connection] = []
        taken = None
        with self._lock:
            idle = self._idle.get(path, [])
            while idle:
                raw, identity = idle.pop()
                if identity == current:
                    taken = raw, identity
                    break
                stale.append(raw)
        for raw in stale:
            raw.close()
        return taken

    def put(self, path: str, raw: sqlite3.Connection, identity: FileIdentity) -> bool:
        """Keep `raw` (idle, no transaction) for reuse; False when the list is full (close it then)."""
        with self._lock:
            idle = self._idle.setdefault(path, [])
            if len(idle) >= MAX_IDLE_PER_FILE:
                return False
            idle.append((raw, identity))
            return True

    def close_all(self) -> None:
        """Close every idle connection (at exit: the last connection to close checkpoints the WAL)."""
        with self._lock:
            lists, self._idle = list(self._idle.values()), {}
        for idle in lists:
            for raw, _ in idle:
                raw.close()


idle_connections = _IdleConnections()
atexit.register(idle_connections.close_all)


def _write_lock(name: str) -> threading.RLock:
    with _locks_guard:
        lock = _locks.get(name)
        if lock is None:
            lock = _locks[name] = threading.RLock()
        return lock


class DatabaseWrapper(base.DatabaseWrapper):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._holds_write_lock = False
        self._file: FileIdentity | None = None  # the identity of the file the open connection is to
        self._constraints_off = False  # foreign keys turned off on the open connection

    def disable_constraint_checking(self) -> bool:
        self._constraints_off = True
        return bool(super().disable_constraint_checking())

    def enable_constraint_checking(self) -> None:
        super().enable_constraint_checking()
        self._constraints_off = False

    def get_new_connection(self, conn_params: dict[str, Any]) -> sqlite3.Connection:
        self._constraints_off = False  # new or kept, a connection has foreign keys on
        if self.is_in_memory_db():
            self._file = None
            return super().get_new_connection(conn_params)
        path = str(self.settings_dict["NAME"])
        kept = idle_connections.take(path)
        if kept is not None:
            raw, self._file = kept
            return raw
        raw = super().get_new_connection(conn_params)
        self._file = _file_identity(path)
        return raw

    def _keep(self) -> bool:
        """Keep the open connection for reuse instead of closing it, when it is clean."""
        raw = self.connection
        identity, self._file = self._file, None
        if raw is None or identity is None or self.in_atomic_block or self.errors_occurred:
            return False  # closed inside atomic(), Django still holds the connection: never shared
        if self._constraints_off:
            return False  # foreign keys off (loaddata, the schema editor): not as a new connection is
        try:
            if raw.in_transaction:
                raw.rollback()
            raw.isolation_level = None  # autocommit, as Django sets a new connection
        except sqlite3.Error:
            return False
        return idle_connections.put(str(self.settings_dict["NAME"]), raw, identity)

    def _lock(self) -> threading.RLock:
        return _write_lock(str(self.settings_dict["NAME"]))

    def _release_write_lock(self) -> None:
        if self._holds_write_lock:
            self._holds_write_lock = False
            self._lock().release()

    def _start_transaction_under_autocommit(self) -> None:
        if not self._lock().acquire(timeout=WRITE_LOCK_TIMEOUT_S):
            raise OperationalError(
                f"another transaction of this process held the database for {WRITE_LOCK_TIMEOUT_S:.0f} s"
            )
        self._holds_write_lock = True
        try:
            super()._start_transaction_under_autocommit()  # type: ignore[misc]
        except BaseException:
            self._release_write_lock()
            raise

    def _commit(self) -> None:
        try:
            super()._commit()  # type: ignore[misc]  # private in the stubs, present in Django
        finally:
            self._release_write_lock()

    def _rollback(self) -> None:
        try:
            super()._rollback()  # type: ignore[misc]
        finally:
            self._release_write_lock()

    def _close(self) -> None:
        try:
            if not self._keep():
                super()._close()  # type: ignore[misc]
        finally:
            self._release_write_lock()
