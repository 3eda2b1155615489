"""Offline verification of a million-row audit export, against a plain parse of the same file.

The file: N rows (default 1,000,000) of an `audit_only` NDJSON export, as `GET /api/audit/export/`
writes them (the contract's event with `position`, then `entry_id`, `kind`, `actor`, `prev_hash`,
`hash`; data of a few keys, nested, with unicode and floats, about 450 bytes a row), chained with the
server's own `audit.services.chain_hash`, ending with a `{"signed_head": ...}` line signed with a fresh
Ed25519 key by the server's `audit.signing.make_head`. It is generated directly into a temporary file
(not through the server: the rows' content is what matters), untimed.

Measured, each in a fresh subprocess (so each peak RSS is its own):

  A. `eventbus_client.verify_export(path, public_key_pem)`: every row parsed, its hash recomputed, its
     link checked, the head's signature checked; rows/s and peak RSS (VmHWM), of this process and of
     the largest of the worker processes it starts (`workers=`, default min(2, CPU count): each checks
     a part of the file), sampled every 50 ms;
  B. the anchor: `json.loads` of every line of the same file (a plain JSON-lines parse); rows/s.

To show the memory stays flat, A also runs on the first tenth of the file (with its own signed head):
the peak RSS of both should be about the same.

Goals (issue 17): A at least 100,000 rows/s with constant memory; the ratio verify/parse is printed
last.

Run from the repository root: `.venv/bin/python benchmarks/verify_export.py [--rows N]`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _common import RESULT_PREFIX, ROOT, positive_int, result_of

AGENTS = ["planner", "researcher", "coder", "reviewer", "operator-é", "summariser"]


def log(message: str) -> None:
    print(f"[verify_export] {message}", file=sys.stderr, flush=True)


def generate(path: Path, rows: int, key_path: Path) -> str:
    """Write the export and the key; return the public key's PEM."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "eventbus_project.settings")
    import django

    django.setup()
    from audit import signing
    from audit.models import GENESIS_HASH
    from audit.services import chain_hash
    from events.base import format_timestamp

    private = signing.generate_private_key()
    signing.write_private_key(key_path, private)
    public = private.public_key()
    key = signing.SigningKey(private, public, signing.key_id(public), signing.public_pem(public))
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    start = datetime(2026, 1, 1, tzinfo=UTC)
    previous = GENESIS_HASH
    tenth = max(1, rows // 10)
    small = path.with_name("tenth.ndjson")
    with path.open("w", encoding="utf-8") as out, small.open("w", encoding="utf-8") as out_small:
        for n in range(1, rows + 1):
            moment = start + timedelta(milliseconds=37 * n)
            entry: dict[str, Any] = {
                "kind": "event",
                "position": 3 * n,
                "event_id": f"{n:08x}-1d8c-4f63-9e4a-{n:012x}",
                "event_type": "agent_switched" if n % 3 else "hitl_decision_made",
                "event_category": "agent" if n % 3 else "hitl",
                "timestamp": moment,
                "session_id": f"session-{n // 40}",
                "correlation_id": f"corr-{n // 8}",
                "actor": None if n % 5 else "alice",
                "data": {
                    "from_agent": AGENTS[n % 6],
                    "to_agent": AGENTS[(n + 1) % 6],
                    "reason": "handing over the «next» step",
                    "context": {"turn": n % 17, "score": (n % 100) / 8, "tools": ["search", "fetch"]},
                },
                "source": "agent-runtime",
            }
            digest = chain_hash(previous, entry)
            row = {
                "event_id": entry["event_id"],
                "event_type": entry["event_type"],
                "event_category": entry["event_category"],
                "timestamp": format_timestamp(moment),
                "session_id": entry["session_id"],
                "correlation_id": entry["correlation_id"],
                "causation_id": None,
                "data": entry["data"],
                "source": entry["source"],
                "version": "1.0",
                "position": entry["position"],
                "entry_id": n,
                "kind": "event",
                "actor": entry["actor"],
                "prev_hash": previous,
                "hash": digest,
            }
            line = dumps(row) + "\n"
            out.write(line)
            if n <= tenth:
                out_small.write(line)
                if n == tenth:
                    head = signing.make_head(n, digest, n, key)
                    out_small.write(dumps({"signed_head": head}) + "\n")
            previous = digest
        out.write(dumps({"signed_head": signing.make_head(rows, previous, rows, key)}) + "\n")
    return signing.public_pem(public)


def measure(kind: str, path: str, public_pem: str, workers: int | None) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "client"))
    children = ChildrenPeak()
    started = time.perf_counter()
    if kind == "verify":
        from eventbus_client import verify_export

        children.start()
        try:
            result = verify_export(path, public_pem, workers=workers)
        finally:
            children.stop()
        rows = result.rows
        assert "django" not in sys.modules
    else:
        loads = json.loads
        rows = 0
        with open(path, encoding="utf-8", newline="\n") as handle:
            for line in handle:
                loads(line)
                rows += 1
        rows -= 1  # the signed head line
    seconds = time.perf_counter() - started
    return {
        "rows": rows,
        "seconds": seconds,
        "peak_rss_kb": peak_rss_kb(),
        "worker_peak_rss_kb": children.peak_kb,
        "worker_count": len(children.seen),
    }


def peak_rss_kb(pid: int | str = "self") -> int:
    """A process's peak resident set (VmHWM: ru_maxrss may carry the parent's over fork and exec)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss if pid == "self" else 0


class ChildrenPeak(threading.Thread):
    """The largest peak RSS (VmHWM) of this process's children, sampled every 50 ms (Linux /proc): the
    last sample of each (a first one may fall between fork and exec, where the child shows ours)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.last_kb: dict[int, int] = {}
        self._done = threading.Event()

    @property
    def seen(self) -> list[int]:
        return list(self.last_kb)

    @property
    def peak_kb(self) -> int:
        return max(self.last_kb.values(), default=0)

    def stop(self) -> None:
        self._done.set()
        self.join()

    def run(self) -> None:
        me = os.getpid()
        children = f"/proc/{me}/task/{me}/children"
        while not self._done.wait(0.05):
            try:
                with open(children) as listing:
                    pids = [int(pid) for pid in listing.read().split()]
            except OSError:
                return
            for pid in pids:
                peak = peak_rss_kb(pid)
                if peak:
                    self.last_kb[pid] = peak


def run_child(kind: str, path: Path, public_pem: Path, workers: int | None = None) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--file",
        str(path),
        "--public-key",
        str(public_pem),
    ]
    if workers is not None:
        command += ["--workers", str(workers)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    result = result_of(done.stdout)
    if result is None:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"the {kind} child failed (exit code {done.returncode})")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=positive_int, default=1_000_000)
    parser.add_argument(
        "--workers", type=positive_int, help="verify_export's workers= (default: its own, min(2, CPUs))"
    )
    parser.add_argument("--child", choices=["verify", "parse"], help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--public-key", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        pem = Path(args.public_key).read_text()
        print(RESULT_PREFIX + json.dumps(measure(args.child, args.file, pem, args.workers)), flush=True)
        return

    with tempfile.TemporaryDirectory(prefix="bench_verify_") as folder:
        path = Path(folder) / "export.ndjson"
        started = time.perf_counter()
        pem = generate(path, args.rows, Path(folder) / "audit.pem")
        public = Path(folder) / "audit.pub.pem"
        public.write_text(pem)
        size = path.stat().st_size
        log(f"generated {args.rows:,} rows ({size / 1e6:,.0f} MB) in {time.perf_counter() - started:.1f} s")
        parse = run_child("parse", path, public)
        log(f"parse: {parse['rows'] / parse['seconds']:,.0f} rows/s")
        verify = run_child("verify", path, public, args.workers)
        log(f"verify: {verify['rows'] / verify['seconds']:,.0f} rows/s")
        small = run_child("verify", path.with_name("tenth.ndjson"), public, args.workers)
        assert verify["rows"] == parse["rows"] == args.rows, (verify, parse)

    verify_rate = verify["rows"] / verify["seconds"]
    parse_rate = parse["rows"] / parse["seconds"]
    python = sys.version.split()[0]
    print(f"Verifying a {args.rows:,}-row audit export ({size / 1e6:,.0f} MB, NDJSON), Python {python}:")
    print(
        f"  verify_export   {verify_rate:>11,.0f} rows/s  {verify['seconds']:6.2f} s  "
        f"peak RSS {verify['peak_rss_kb'] / 1024:,.0f} MB{workers_rss(verify)}"
    )
    print(
        f"  (a tenth of it) {small['rows'] / small['seconds']:>11,.0f} rows/s  {small['seconds']:6.2f} s  "
        f"peak RSS {small['peak_rss_kb'] / 1024:,.0f} MB{workers_rss(small)}"
    )
    print(
        f"  json.loads/line {parse_rate:>11,.0f} rows/s  {parse['seconds']:6.2f} s  "
        f"peak RSS {parse['peak_rss_kb'] / 1024:,.0f} MB"
    )
    print(f"  goal: >= 100,000 rows/s: {'met' if verify_rate >= 100_000 else 'NOT met'}")
    print(f"ratio verify/parse {verify_rate / parse_rate:.3f}")


def workers_rss(result: dict[str, Any]) -> str:
    count = result["worker_count"]
    if not count:
        return ""
    plural = "es" if count > 1 else ""
    return f" + {count} worker process{plural}, each <= {result['worker_peak_rss_kb'] / 1024:,.0f} MB"


if __name__ == "__main__":
    main()
