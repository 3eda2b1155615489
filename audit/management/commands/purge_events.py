"""Retention: delete stored events older than a date, keeping the audit chain verifiable."""

from datetime import UTC, datetime, time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.dateparse import parse_date, parse_datetime

from audit.services import AuditError, events_purge
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
        "verifiable. Use --dry-run to see the counts first."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--before", required=True, help="a date or ISO 8601 date-time (UTC)")
        parser.add_argument("--category", choices=[c.value for c in EventCategory])
        parser.add_argument("--dry-run", action="store_true", help="count what would go; delete nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        before = parse_moment(options["before"])

        def progress(count: int) -> None:
            self.stderr.write(f"  {count:,} events deleted", ending="\r")

        try:
            result = events_purge(
                before=before, category=options["category"], dry_run=options["dry_run"], progress=progress
            )
        except AuditError as error:
            raise CommandError(str(error)) from None
        verb = "Would delete" if result.dry_run else "Deleted"
        counts = f"{result.events:,} events and {result.audit_entries:,} audit entries"
        self.stdout.write(f"{verb} {counts} before {before.isoformat()}.")
