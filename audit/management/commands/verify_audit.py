"""Verify the audit chain: exit 0 when it holds, 1 naming the first broken entry.

With witness files (`--witness`, else AUDIT_WITNESS_FILE), every signed head they hold must still be in
the chain, so deleting or rewriting the newest entries is caught too. With `--public-key` (else the
configured signing key's), the heads and the purge checkpoints must carry valid signatures.
"""

import json
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit import signing
from audit.services import audit_verify


class Command(BaseCommand):
    help = (
        "Recompute the audit trail's hash chain, check that every witnessed head is still in it and (with "
        "a public key) every signature; exit 1 at the first entry that does not hold."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print the result as JSON")
        parser.add_argument(
            "--witness",
            action="append",
            metavar="FILE",
            help="a witness file of signed heads (repeatable; default AUDIT_WITNESS_FILE)",
        )
        parser.add_argument(
            "--public-key",
            action="append",
            metavar="PEM",
            help="a PEM file of the signing key's public key (repeatable; default the configured key's)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        def progress(count: int) -> None:
            self.stderr.write(f"  {count:,} entries checked", ending="\r")

        keys = None
        if options["public_key"]:
            try:
                keys = [signing.load_public_key(path) for path in options["public_key"]]
            except signing.SigningError as error:
                raise CommandError(str(error)) from None
        result = audit_verify(progress=progress, witness=options["witness"], public_keys=keys)
        if options["json"]:
            self.stdout.write(json.dumps(result.as_dict()))
        elif result.ok:
            extra = f", {result.heads:,} witnessed heads in it" if result.heads else ", no witness file"
            signed = "signatures checked" if result.signatures else "signatures not checked (no public key)"
            self.stdout.write(
                self.style.SUCCESS(f"The audit chain holds: {result.entries:,} entries{extra}; {signed}.")
            )
        else:
            where = (
                f"at entry {result.broken_entry}" if result.broken_entry is not None else "before any entry"
            )
            self.stdout.write(
                self.style.ERROR(
                    f"The audit chain is broken {where} "
                    f"({result.entries:,} entries checked): {result.reason}."
                )
            )
        if not result.ok:
            sys.exit(1)
