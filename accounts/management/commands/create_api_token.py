"""Create an API token for a user (created if missing, without a password); the token is the last line."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.services import api_token_issue
from core.errors import ApplicationError


class Command(BaseCommand):
    help = (
        "Create an API token for USERNAME (creating the user, without a password, if missing) and "
        "print it as the last line of output. It is shown only this once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--group", help="add the user to this group, e.g. agents (set up if missing)")
        parser.add_argument("--name", default="", help="a label for the token, e.g. the runtime's host")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            issued = api_token_issue(
                username=options["username"], group=options["group"], name=options["name"]
            )
        except ApplicationError as error:
            raise CommandError(error.message) from error
        if issued.roles is not None:
            for line in issued.roles.lines:
                self.stdout.write(line)
        username = issued.user.get_username()
        if issued.user_created:
            self.stdout.write(f"Created user {username!r} (no password: it authenticates with tokens).")
        if issued.group is not None:
            self.stdout.write(f"User {username!r} is in group {issued.group!r}.")
        self.stdout.write(f"New API token for {username!r} (shown only now; send it as `Bearer <token>`):")
        self.stdout.write(issued.token)
