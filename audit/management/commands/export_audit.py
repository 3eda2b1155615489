"""Export stored events (or the audit trail's alone) as CSV, NDJSON or JSON, to stdout or a file.

The same rows, in the same format, as GET /api/audit/export/ (audit.exports), with a progress line on
stderr. An interrupted export resumes with --after <the last position written>. With --audit-only, an
NDJSON export ends with its signed head; a CSV or JSON one written with --output gets it beside it, in
`<FILE>.head.json` (what verify_export reads).
"""

import json
import time
from pathlib import Path
from typing import IO, Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.exports import DEFAULT_FORMAT, FORMATS, EventExport, export_from_params
from core.errors import ApplicationError

# Options that are filters of /api/events/, by the query parameter they fill.
FILTER_OPTIONS = ("session_id", "correlation_id", "event_type", "event_category", "since", "until", "after")
PROGRESS_INTERVAL_S = 0.5


class Command(BaseCommand):
    help = (
        "Export every stored event matching the filters (with --audit-only, only the audit trail's), in "
        "position order, with constant memory; progress on stderr. Resume an interrupted export with "
        "--after <last position written>."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--format", choices=list(FORMATS), default=DEFAULT_FORMAT)
        parser.add_argument("--output", "-o", help="write to this file instead of stdout")
        parser.add_argument("--session-id")
        parser.add_argument("--correlation-id")
        parser.add_argument("--event-type")
        parser.add_argument("--event-category")
        parser.add_argument("--since", help="ISO 8601 date-time: events at or after it (UTC if no zone)")
        parser.add_argument("--until", help="ISO 8601 date-time: events before it (UTC if no zone)")
        parser.add_argument("--after", help="a position: events stored after it")
        parser.add_argument("--audit-only", action="store_true", help="only the events of the audit trail")

    def handle(self, *args: Any, **options: Any) -> None:
        params = {name: options[name] for name in FILTER_OPTIONS if options[name] is not None}
        params["format"] = options["format"]
        params["audit_only"] = "true" if options["audit_only"] else "false"
        try:
            export = export_from_params(params)
        except ApplicationError as error:
            raise CommandError(option_message(error)) from None

        if options["output"]:
            path = Path(options["output"])
            try:
                with path.open("wb") as handle:
                    self.write(export, handle)
                if export.audit_only and export.format.name != "ndjson" and export.signed_head is not None:
                    sidecar = path.with_name(path.name + ".head.json")
                    text = json.dumps({"signed_head": export.signed_head}, separators=(",", ":"))
                    sidecar.write_text(text + "\n", encoding="utf-8")
                    self.stderr.write(f"The signed head is in {sidecar}.")
            except OSError as error:
                raise CommandError(f"cannot write {path}: {error}") from None
        else:
            self.stdout.flush()
            binary = getattr(self.stdout, "buffer", None)  # the real stdout; a StringIO in tests has none
            self.write(export, binary)

    def write(self, export: EventExport, out: IO[bytes] | None) -> None:
        """Copy the export to `out` (or to self.stdout as text), showing progress on stderr."""
        started = last_shown = time.monotonic()
        try:
            for chunk in export.chunks():
                if out is None:
                    self.stdout.write(chunk.decode(), ending="")
                else:
                    out.write(chunk)
                now = time.monotonic()
                if now - last_shown >= PROGRESS_INTERVAL_S:
                    last_shown = now
                    self.stderr.write(progress_line(export.rows_written, now - started), ending="\r")
        except BaseException:
            if export.last_position is not None:
                last = export.last_position
                self.stderr.write(f"\nStopped after position {last}: resume with --after {last}.")
            raise
        if out is not None:
            out.flush()
        self.stderr.write(progress_line(export.rows_written, time.monotonic() - started) + " - done.")


def progress_line(rows: int, elapsed: float) -> str:
    """`1,234,567 events written, 150,000 events/s, 8.2 s`."""
    rate = rows / elapsed if elapsed > 0 else 0.0
    return f"  {rows:,} events written, {rate:,.0f} events/s, {elapsed:.1f} s"


def option_message(error: ApplicationError) -> str:
    """The error of a query parameter, as the command's option (`since: ...` -> `--since: ...`)."""
    errors = error.extra.get("errors") or []
    if not errors:
        return error.message
    return "; ".join(f"--{item['field'].replace('_', '-')}: {item['message']}" for item in errors)
