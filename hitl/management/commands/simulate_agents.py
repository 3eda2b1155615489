"""Publish realistic agent sessions, approval requests included, so a demo's feed and queue fill."""

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from core.errors import ApplicationError
from events.apps import start_distributed_bus
from events.event_bus import event_bus
from hitl.simulation import TOOL_SCHEMAS, Simulation, SimulationOptions, SimulationSummary

DEFAULTS = SimulationOptions()


class Command(BaseCommand):
    help = (
        "Simulate agent sessions: users ask, a triage agent hands over to specialists, tools run or fail, "
        "risky calls wait for a decision on the approval page (/hitl/). Every event goes through the bus "
        "into the store. Ctrl-C (or the end of --duration) stops and withdraws the requests still pending."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--sessions",
            type=int,
            default=DEFAULTS.sessions,
            help="sessions at work at once; one waiting for a decision steps aside (default %(default)s)",
        )
        parser.add_argument(
            "--rate",
            type=float,
            default=DEFAULTS.rate,
            help="events per second, all sessions together (default %(default)s)",
        )
        parser.add_argument(
            "--duration",
            type=float,
            default=DEFAULTS.duration,
            help="seconds to run; 0 runs until Ctrl-C (default %(default)s)",
        )
        parser.add_argument(
            "--approval-share",
            type=float,
            default=DEFAULTS.approval_share,
            help="fraction of tool calls held for approval, 0 to 1 (default %(default)s)",
        )
        parser.add_argument(
            "--failure-share",
            type=float,
            default=DEFAULTS.failure_share,
            help="fraction of tool runs that fail with a realistic error, 0 to 1 (default %(default)s)",
        )
        parser.add_argument(
            "--approval-timeout",
            type=float,
            default=DEFAULTS.approval_timeout,
            help="seconds an approval request waits before it expires (rejected) (default %(default)s)",
        )
        parser.add_argument(
            "--max-waiting",
            type=int,
            default=DEFAULTS.max_waiting,
            help="approval requests pending at once; beyond, agents pick safe tools (default %(default)s)",
        )
        parser.add_argument("--seed", type=int, default=None, help="repeat the same sessions' scripts")
        parser.add_argument(
            "--once", action="store_true", help="start --sessions sessions, then stop when they have ended"
        )
        parser.add_argument(
            "--write-schemas",
            metavar="FILE",
            help="write the simulated tools' JSON Schemas to FILE (for HITL_TOOL_SCHEMAS_FILE), then stop",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["write_schemas"]:
            self._write_schemas(options["write_schemas"])
            return
        settings = SimulationOptions(
            sessions=options["sessions"],
            rate=options["rate"],
            duration=options["duration"],
            approval_share=options["approval_share"],
            failure_share=options["failure_share"],
            approval_timeout=options["approval_timeout"],
            max_waiting=options["max_waiting"],
            seed=options["seed"],
            once=options["once"],
        )
        try:
            settings.validate()
        except ValueError as error:
            raise CommandError(str(error)) from None
        until = f"for {settings.duration:g} s" if settings.duration else "until Ctrl-C"
        self._say(
            f"Simulating {settings.sessions} agent sessions at {settings.rate:g} events/s {until}; "
            f"{settings.approval_share:.0%} of tool calls wait for a decision at /hitl/ "
            f"({settings.approval_timeout:g} s before they expire)."
        )
        try:
            summary = asyncio.run(self._run(settings))
        except DatabaseError as error:
            raise CommandError(
                f"the database refused ({error}); has `python manage.py migrate` run?"
            ) from error
        except ApplicationError as error:
            raise CommandError(error.message) from error
        for line in summary.lines():
            self._say(line)

    def _write_schemas(self, path: str) -> None:
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(json.dumps(TOOL_SCHEMAS, indent=2) + "\n", encoding="utf-8")
        except OSError as error:
            raise CommandError(f"could not write {path}: {error}") from None
        self._say(f"Wrote the JSON Schemas of {len(TOOL_SCHEMAS)} simulated tools to {path}.")

    def _say(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()  # progress shows at once even when stdout is a pipe

    async def _run(self, settings: SimulationOptions) -> SimulationSummary:
        loop = asyncio.get_running_loop()
        # This process's bus lives on this loop: the services, called in worker threads, publish here
        # (on commit), the store writes here, and decisions wake the waiting sessions here.
        event_bus.bind(loop)
        # With REDIS_URL, hear the other processes' events from the start: a decision made on the
        # server then wakes its session at once rather than at the next re-read of the request.
        await start_distributed_bus()
        simulation = Simulation(settings, out=self._say)
        installed: list[signal.Signals] = []

        def stop(signum: int) -> None:
            self._say(f"{signal.Signals(signum).name}: stopping (again to quit at once)...")
            simulation.stop()
            # A second signal gets Python's default behaviour (KeyboardInterrupt).
            for sig in installed:
                loop.remove_signal_handler(sig)

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop, sig)
            except (ValueError, RuntimeError, NotImplementedError):
                break  # not the main thread (a test), or no signals here: Ctrl-C stops abruptly
            installed.append(sig)
        try:
            return await simulation.run()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            # Commit what the store still buffers before the loop goes away.
            await event_bus.shutdown(timeout=30)
