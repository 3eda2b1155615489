"""Who has which approval request open, for /ws/hitl/'s `presence` messages.

Each /ws/hitl/ connection says what it has open (`{"action": "viewing", "call_ids": [...]}`). The
process keeps a bounded board of every connection's report, its own and other processes': a report is
applied here at once and also sent to the channel layer's group PRESENCE_GROUP, so every connection in
every process (in-memory layer: this process; Redis: all of them) applies it and tells its client what
changed. A connection that closes sends an empty report. A process that dies sends nothing: every
connection repeats its report every REFRESH_S, and a report older than STALE_S is forgotten.

Nothing here is stored: presence is a courtesy, lost with the processes, never an authority.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

PRESENCE_GROUP = "hitl.presence"
MAX_VIEWING = 20  # call_ids one connection may have open at once
MAX_ENTRIES = 5000  # connections the board remembers (per process); past this, the stalest go
MAX_VIEWERS = 50  # usernames a presence message names
REFRESH_S = 30.0
STALE_S = 3 * REFRESH_S


@dataclass
class Report:
    username: str
    call_ids: frozenset[str]
    seq: int
    seen: float


class PresenceBoard:
    """Connection key -> its latest report (an empty one is a tombstone until it goes stale)."""

    def __init__(self, max_entries: int = MAX_ENTRIES, stale_s: float = STALE_S) -> None:
        self.max_entries = max_entries
        self.stale_s = stale_s
        self.reports: dict[str, Report] = {}
        self.by_call_id: dict[str, set[str]] = {}

    def apply(
        self,
        *,
        key: str,
        username: str,
        call_ids: list[str] | frozenset[str],
        seq: int,
        now: float | None = None,
    ) -> set[str]:
        """Record a connection's report (ignored when older than the one held); the call_ids it touched."""
        now = time.monotonic() if now is None else now
        held = self.reports.get(key)
        if held is not None and seq < held.seq:
            return set()
        wanted = frozenset(call_ids)
        before = held.call_ids if held is not None else frozenset()
        self._unindex(key, before)
        self.reports[key] = Report(username=username, call_ids=wanted, seq=seq, seen=now)
        for call_id in wanted:
            self.by_call_id.setdefault(call_id, set()).add(key)
        if len(self.reports) > self.max_entries:
            self._evict(len(self.reports) - self.max_entries)
        return set(before ^ wanted) if held is None or held.username == username else set(before | wanted)

    def prune(self, now: float | None = None) -> set[str]:
        """Forget reports not repeated within stale_s; the call_ids that lost a viewer."""
        now = time.monotonic() if now is None else now
        touched: set[str] = set()
        for key, report in list(self.reports.items()):
            if now - report.seen > self.stale_s:
                touched |= report.call_ids
                self._unindex(key, report.call_ids)
                del self.reports[key]
        return touched

    def viewers(self, call_id: str) -> list[str]:
        """The usernames that have `call_id` open, sorted, each once."""
        keys = self.by_call_id.get(call_id, ())
        return sorted({self.reports[key].username for key in keys})[:MAX_VIEWERS]

    def watched(self) -> list[str]:
        """Every call_id somebody has open."""
        return sorted(self.by_call_id)

    def clear(self) -> None:
        self.reports.clear()
        self.by_call_id.clear()

    def _unindex(self, key: str, call_ids: frozenset[str]) -> None:
        for call_id in call_ids:
            keys = self.by_call_id.get(call_id)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self.by_call_id[call_id]

    def _evict(self, count: int) -> None:
        for key, report in sorted(self.reports.items(), key=lambda item: item[1].seen)[:count]:
            self._unindex(key, report.call_ids)
            del self.reports[key]


board = PresenceBoard()
