"""SQLite with one writer at a time per process, queued in Python rather than in SQLite's busy handler.

SQLite has one writer. When several threads of this process (the event store's writer, sync views,
commands) start write transactions at once, SQLite's busy handler lets them retry with growing sleeps,
and one that keeps losing the race fails with "database is locked" after the timeout. Here every
transaction (BEGIN IMMEDIATE, see settings) first takes a per-database lock in Python, which threads
wait on in turn, so inside one process that error cannot happen; the lock is released on commit or
rollback. Several processes on one SQLite file still share SQLite's own lock: run PostgreSQL for that.
"""

from __future__ import annotations

import threading
from typing import Any

from django.db import OperationalError
from django.db.backends.sqlite3 import base

WRITE_LOCK_TIMEOUT_S = 60.0
_locks: dict[str, threading.RLock] = {}
_locks_guard = threading.Lock()


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
            super()._close()  # type: ignore[misc]
        finally:
            self._release_write_lock()
