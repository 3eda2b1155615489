"""Verify the audit chain: exit 0 when it holds, 1 naming the first broken entry."""

import json
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from audit.services import audit_verify


class Command(BaseCommand):
    help = "Recompute the audit trail's hash chain; exit 1 at the first entry that does not hold."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print the result as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        def progress(count: int) -> None:
            self.stderr.write(f"  {count:,} entries checked", ending="\r")

        result = audit_verify(progress=progress)
        if options["json"]:
            self.stdout.write(json.dumps(result.as_dict()))
        elif result.ok:
            self.stdout.write(self.style.SUCCESS(f"The audit chain holds: {result.entries:,} entries."))
        else:
            self.stdout.write(
                self.style.ERROR(
                    f"The audit chain is broken at entry {result.broken_entry} "
                    f"({result.entries:,} entries checked): {result.reason}."
                )
            )
        if not result.ok:
            sys.exit(1)
