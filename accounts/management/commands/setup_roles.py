"""Create the groups operators, auditors and agents with the permissions each app declares for them."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from accounts.services import roles_setup
from core.errors import ApplicationError


class Command(BaseCommand):
    help = "Create the groups of accounts.roles and grant what the apps declare for them; safe to run again."

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            report = roles_setup()
        except ApplicationError as error:
            raise CommandError(error.message) from error
        for line in report.lines:
            self.stdout.write(line)
        if not report.changed:
            self.stdout.write("Nothing to do: every role is set up.")
