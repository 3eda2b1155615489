"""Write an Ed25519 key for signing the audit trail (AUDIT_SIGNING_KEY_FILE), or rotate to a new one.

`audit_keygen PATH` writes a PEM private key with mode 0600 (never over an existing file unless --force)
and prints its public key (PEM) on stdout. `audit_keygen --rotate OLD_PATH NEW_PATH` also writes a
rotation record, signed by the new key and by the old one, naming both keys: it is stored in the
database (GET /api/audit/public-key/?format=json lists them) and appended to the witness file, so
whatever the old key signed stays verifiable with a trust anchored in either key. Point
AUDIT_SIGNING_KEY_FILE at the new key and restart the server afterwards.
"""

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit import signing


class Command(BaseCommand):
    help = (
        "Write a new Ed25519 audit signing key (PEM, mode 0600) to PATH and print its public key; with "
        "--rotate OLD_PATH, also record a rotation from the old key signed by both keys."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", metavar="PATH", help="where to write the new private key")
        parser.add_argument("--force", action="store_true", help="overwrite PATH if it exists")
        parser.add_argument("--rotate", metavar="OLD_PATH", help="the key being replaced (its private key)")
        parser.add_argument(
            "--witness",
            metavar="FILE",
            help="append the rotation record to this file (default AUDIT_WITNESS_FILE)",
        )
        parser.add_argument(
            "--no-store", action="store_true", help="do not store the rotation record in the database"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        path = Path(options["path"])
        old = None
        if options["rotate"]:
            if Path(options["rotate"]).resolve() == path.resolve():
                raise CommandError("the new key needs a path of its own (the old one must stay readable)")
            try:
                old = signing.load_private_key(options["rotate"])
            except signing.SigningError as error:
                raise CommandError(str(error)) from None
        new = signing.generate_private_key()
        try:
            signing.write_private_key(path, new, force=options["force"])
        except signing.SigningError as error:
            raise CommandError(str(error)) from None
        public = new.public_key()
        self.stderr.write(f"Wrote {path} (mode 0600), key id {signing.key_id(public)}.")
        if old is not None:
            record = signing.rotation_record(old, new)
            if not options["no_store"]:
                from audit.models import KeyRotation

                statement = record["statement"]
                KeyRotation.objects.create(
                    old_key_id=statement["old_key_id"], new_key_id=statement["new_key_id"], record=record
                )
            witness = options["witness"] or signing.witness_path()
            if witness:
                line = json.dumps({"key_rotation": record}, separators=(",", ":"), ensure_ascii=False)
                signing.append_lines(witness, [line])
                self.stderr.write(f"Appended the rotation record to {witness}.")
            self.stderr.write(
                f"Rotated from key {record['statement']['old_key_id']}: set AUDIT_SIGNING_KEY_FILE={path} "
                "and restart; keep the old public key with the exports it signed."
            )
        self.stdout.write(signing.public_pem(public), ending="")
