"""Verify an audit export offline: every hash, every link, the signed head, the purge permits.

The check is eventbus_client.verify_export (the agent-side package: no database, no server code), so
this command and an auditor's script say the same thing. Exit 0 when the file holds, 1 naming the first
line that does not.
"""

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from audit import signing
from eventbus_client.verify import ExportVerificationError, verify_export


class Command(BaseCommand):
    help = (
        "Check an audit export (NDJSON with its signed head line; CSV or JSON with FILE.head.json beside "
        "it): every hash, every link and the head's signature; exit 1 naming the first bad line."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", metavar="FILE")
        parser.add_argument(
            "--public-key",
            action="append",
            metavar="PEM",
            help="the server's public key, a PEM file (repeatable; default the configured key's)",
        )
        parser.add_argument("--head", metavar="FILE", help="the signed head of a CSV/JSON export")
        parser.add_argument(
            "--whole-trail",
            action="store_true",
            help="refuse a file that does not start where the trail starts (genesis, or a purge's anchor)",
        )
        parser.add_argument(
            "--rotations",
            metavar="FILE",
            help="key rotation records (a witness file) linking older keys to the public key",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        keys: Any = options["public_key"]
        if not keys:
            key = signing.signing_key()
            keys = [key.public_pem] if key else None
        rotations: Any = options["rotations"]
        if rotations is None and keys:
            from audit.models import KeyRotation

            rotations = list(KeyRotation.objects.order_by("id").values_list("record", flat=True))
        try:
            result = verify_export(
                options["file"],
                keys,
                head=options["head"],
                rotations=rotations,
                whole_trail=options["whole_trail"],
            )
        except ExportVerificationError as error:
            self.stdout.write(self.style.ERROR(f"The export does not hold: {error}."))
            sys.exit(1)
        if result.rows == 0:
            self.stdout.write(self.style.SUCCESS("The export holds no rows: nothing to check."))
            return
        if result.starts_at_genesis:
            start = "the start of the trail"
        elif result.anchored:
            start = "the start of the trail after a purge (a signed checkpoint anchors it)"
        else:
            start = f"{result.first_prev_hash} (a part of the trail: what came before is not covered)"
        signed = f"signed by key {result.key_id}" if result.key_id else "signatures NOT checked (no key)"
        self.stdout.write(
            self.style.SUCCESS(
                f"The export holds: {result.rows:,} rows chained from {start} to entry "
                f"{result.last_entry_id}; {signed}."
            )
        )
