"""Retention: delete stored events older than a date, keeping the audit chain verifiable.

A date inside the retention (AUDIT_RETENTION_DAYS, 183 by default) is refused. `--scheduled` purges what
the retention no longer keeps, for cron (docs/auditors.md); every run, even one that deletes nothing, is
recorded in the audit trail by a (signed, with a key) checkpoint entry.
"""

from datetime import UTC, datetime, time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.dateparse import parse_date, parse_datetime

from audit.services import AuditError, events_purge, retention_cutoff
from events.event_types import EventCategory


def parse_moment(value: str) -> datetime:
    """A date (midnight UTC) or an ISO 8601 date-time (UTC when it names no zone)."""
    try:
        moment = parse_datetime(value)
        if moment is None:
            day = parse_date(value)
            if day is None:
                raise ValueError
            moment = datetime.combine(day, time.min)
    except ValueError:
        raise CommandError(
            f"--before {value!r} is not a date (2026-01-31) or an ISO 8601 date-time"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Command(BaseCommand):
    help = (
        "Delete stored events older than --before (of one --category if given). Without a category the "
        "audit entries older than that date that begin the chain go too; a checkpoint entry keeps the chain "
        "verifiable. Use --dry-run to see the counts first. A date inside AUDIT_RETENTION_DAYS is refused; "
        "--scheduled purges everything older than the retention (for cron)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        when = parser.add_mutually_exclusive_group(required=True)
        when.add_argument("--before", help="a date or ISO 8601 date-time (UTC)")
        when.add_argument(
            "--scheduled",
            action="store_true",
            help="purge what is older than AUDIT_RETENTION_DAYS (the run is audited even when nothing goes)",
        )
        parser.add_argument("--category", choices=[c.value for c in EventCategory])
        parser.add_argument("--dry-run", action="store_true", help="count what would go; delete nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        before = retention_cutoff() if options["scheduled"] else parse_moment(options["before"])

        def progress(count: int) -> None:
            self.stderr.write(f"  {count:,} events deleted", ending="\r")

        try:
            result = events_purge(
                before=before,
                category=options["category"],
                dry_run=options["dry_run"],
                progress=progress,
                scheduled=options["scheduled"],
            )
        except AuditError as error:
            raise CommandError(str(error)) from None
        verb = "Would delete" if result.dry_run else "Deleted"
        counts = f"{result.events:,} events and {result.audit_entries:,} audit entries"
        self.stdout.write(f"{verb} {counts} before {before.isoformat()}.")
