"""What signing the audit chain's head costs the store: ingest of critical events with and without a key.

Every event published here is an agent switch, which the audit hook chains into the trail, so every
batch the store commits appends entries and (with AUDIT_SIGNING_KEY_FILE) has its new head signed after
the commit (audit.signing.entries_committed: Ed25519 over the head's canonical JSON, in the writer
thread). In one process, on one fresh database (a temporary SQLite file, or with `--database postgres`
a new `bench_sign_<pid>` database, migrated and thrown away), rounds alternate between the modes so
that both see the same growing table:

  A. no key (AUDIT_SIGNING_KEY_FILE unset): the head is still published unsigned (in memory);
  B. a key (written by audit_keygen into a temporary folder);
  C. a key and AUDIT_WITNESS_FILE (each signed head appended, flushed and fsynced by a background
     thread): shown for information.

Two workloads: `bulk`, N events published fire-and-forget on the app's bus (`await publish(e)` each,
then `drain()` and `flush()`: the store batches them, one signed head per batch), timed from the first
publish until every event is committed; and `single`, M events each stored in its own transaction with
`event_store.store_in_transaction` (the approval path: one commit, one signed head, per event).
Each mode's figure is the median of its rounds; the entries, counted afterwards, must match.

Goal (issue 17): signing costs under 5 %, i.e. `ratio signed/unsigned` >= 0.95 (the last line printed,
for the bulk workload).

Run from the repository root: `.venv/bin/python benchmarks/audit_signing.py [--events N] [--single M]
[--rounds R] [--database sqlite|postgres]`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    DEFAULT_POSTGRES_SERVER,
    RESULT_PREFIX,
    ROOT,
    drop_postgres,
    positive_int,
    postgres_database,
    result_of,
    sqlite_file,
)

MODES = ("unsigned", "signed", "signed+witness")


def log(message: str) -> None:
    print(f"[audit_signing] {message}", file=sys.stderr, flush=True)


def child(database: str, count: int, single: int, rounds: int, server: str) -> dict[str, Any]:
    context = (
        postgres_database(server, f"bench_sign_{os.getpid()}")
        if database == "postgres"
        else sqlite_file("bench_sign_")
    )
    with context as target, tempfile.TemporaryDirectory(prefix="bench_sign_keys_") as keys:
        os.environ["DATABASE_URL"] = target if database == "postgres" else f"sqlite:///{target}"
        os.environ["DJANGO_SETTINGS_MODULE"] = "eventbus_project.settings"
        os.environ.setdefault("EVENTS_LOG_LEVEL", "WARNING")
        os.environ.pop("AUDIT_SIGNING_KEY_FILE", None)
        os.environ.pop("AUDIT_WITNESS_FILE", None)
        sys.path.insert(0, str(ROOT))
        import django

        django.setup()
        from django.conf import settings
        from django.core.management import call_command
        from django.db import connections, transaction

        from audit import signing
        from audit.models import AuditEntry
        from audit.subscribers import install_subscribers
        from events.agent_events import AgentSwitchedEvent
        from events.event_bus import event_bus
        from events.event_store import event_store

        call_command("migrate", verbosity=0)
        key_file = Path(keys) / "audit.pem"
        witness = Path(keys) / "witness.jsonl"
        call_command("audit_keygen", str(key_file), stdout=io.StringIO(), stderr=io.StringIO())
        install_subscribers(event_bus)

        def configure(mode: str) -> None:
            settings.AUDIT_SIGNING_KEY_FILE = None if mode == "unsigned" else str(key_file)
            settings.AUDIT_WITNESS_FILE = str(witness) if mode == "signed+witness" else None
            if mode != "unsigned":
                signing.signing_key()  # read once, outside the timing

        def events(n: int, tag: str) -> list[Any]:
            return [
                AgentSwitchedEvent(
                    session_id=f"s-{tag}-{i % 50}", from_agent="planner", to_agent=f"agent-{i % 7}"
                )
                for i in range(n)
            ]

        figures: dict[str, dict[str, list[float]]] = {
            "bulk": {m: [] for m in MODES},
            "single": {m: [] for m in MODES},
        }
        batches: dict[str, list[int]] = {m: [] for m in MODES}

        async def bulk_round(batch: list[Any]) -> tuple[float, int]:
            publish = event_bus.publish
            before = event_store.get_stats()["batches"]
            gc.collect()
            start = time.perf_counter()
            for event in batch:
                await publish(event)
            assert await event_bus.drain() and await event_store.flush()
            return time.perf_counter() - start, event_store.get_stats()["batches"] - before

        def single_round(batch: list[Any]) -> float:
            gc.collect()
            start = time.perf_counter()
            for event in batch:
                with transaction.atomic():
                    event_store.store_in_transaction([event])
            return time.perf_counter() - start

        async def run_all() -> None:
            # A warm-up round of each, untimed.
            for mode in MODES:
                configure(mode)
                await bulk_round(events(min(count, 2000), f"warm-{mode}"))
            for round_ in range(rounds):
                order = MODES if round_ % 2 == 0 else tuple(reversed(MODES))
                for mode in order:
                    configure(mode)
                    seconds, made = await bulk_round(events(count, f"{round_}-{mode}"))
                    signing.publisher.flush(timeout=30)
                    figures["bulk"][mode].append(count / seconds)
                    batches[mode].append(made)
                    log(f"bulk round {round_ + 1} {mode}: {count / seconds:,.0f} events/s in {made} batches")
                for mode in order:
                    configure(mode)
                    seconds = await asyncio.to_thread(single_round, events(single, f"s{round_}-{mode}"))
                    signing.publisher.flush(timeout=30)
                    figures["single"][mode].append(single / seconds)
                    log(f"single round {round_ + 1} {mode}: {single / seconds:,.0f} events/s")
            await event_bus.shutdown()

        asyncio.run(run_all())
        connections.close_all()
        total = AuditEntry.objects.count()
        expected = 3 * min(count, 2000) + rounds * 3 * (count + single)
        assert total == expected, f"{total} audit entries, expected {expected}"
        witnessed = sum(1 for _ in witness.open()) if witness.exists() else 0
        connections.close_all()
        private = signing.load_private_key(key_file)
        statement = signing.head_statement(signing.make_head(1, "0" * 64, 1, signing.signing_key()))
        started = time.perf_counter()
        for _ in range(2000):
            signing.sign(private, statement)
        sign_us = (time.perf_counter() - started) / 2000 * 1e6
        return {
            "sign_us": sign_us,
            "heads_signed": signing.publisher.signed,
            "database": database,
            "events": count,
            "single": single,
            "rounds": rounds,
            "bulk": figures["bulk"],
            "single_rates": figures["single"],
            "batches": batches,
            "witnessed_heads": witnessed,
            "audit_entries": total,
        }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=positive_int, default=20_000, help="events per bulk round")
    parser.add_argument("--single", type=positive_int, default=1_000, help="events per single round")
    parser.add_argument("--rounds", type=positive_int, default=5)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--postgres-server", default=DEFAULT_POSTGRES_SERVER)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        figures = child(args.database, args.events, args.single, args.rounds, args.postgres_server)
        print(RESULT_PREFIX + json.dumps(figures), flush=True)
        return

    command = [sys.executable, __file__, "--child", "--database", args.database, "--events", str(args.events)]
    command += [
        "--single",
        str(args.single),
        "--rounds",
        str(args.rounds),
        "--postgres-server",
        args.postgres_server,
    ]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        stdout, _ = process.communicate()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if args.database == "postgres":
            drop_postgres(args.postgres_server, f"bench_sign_{process.pid}")
    result = result_of(stdout)
    if result is None:
        raise SystemExit(f"the run failed (exit code {process.returncode}); see above")

    print(f"Audit signing cost, {result['database']}, {result['rounds']} rounds per mode (median):")
    for workload, key, n in (
        ("single", "single_rates", result["single"]),
        ("bulk", "bulk", result["events"]),
    ):
        rates = result[key]
        print(f"  {workload} ({n:,} critical events per round):")
        for mode in MODES:
            runs = ", ".join(f"{value:,.0f}" for value in rates[mode])
            extra = ""
            if workload == "bulk":
                extra = f", {statistics.median(result['batches'][mode]):,.0f} batches (signed heads) a round"
            print(f"    {mode:15} {statistics.median(rates[mode]):>9,.0f} events/s  [{runs}]{extra}")
    print(f"  witnessed heads: {result['witnessed_heads']:,}; audit entries: {result['audit_entries']:,}")
    print(
        f"  signing: {result['sign_us']:.1f} us a head (measured alone); heads signed "
        f"{result['heads_signed']:,} (in the background thread)"
    )

    def paired(rates: dict[str, list[float]], mode: str) -> float:
        # Each round's modes ran back to back: the median of the per-round ratios cancels the drift of
        # a growing table and of a shared machine better than a ratio of medians.
        return statistics.median(s / u for s, u in zip(rates[mode], rates["unsigned"], strict=True))

    single = paired(result["single_rates"], "signed")
    print(f"ratio signed/unsigned (single commits, median of rounds) {single:.3f}")
    witness = paired(result["bulk"], "signed+witness")
    print(f"ratio signed+witness/unsigned (bulk, median of rounds) {witness:.3f}")
    print(f"ratio signed/unsigned {paired(result['bulk'], 'signed'):.3f}")


if __name__ == "__main__":
    main()
