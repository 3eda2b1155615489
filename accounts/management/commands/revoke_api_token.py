"""Revoke API tokens: by their first characters (as `create_api_token` and the admin show them), or all
of one user's."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import ApiToken
from accounts.services import api_token_revoke


class Command(BaseCommand):
    help = "Revoke API tokens by prefix (the first 12 characters of the token) or all tokens of a user."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("prefix", nargs="?", help="the token's prefix, e.g. ebt_AbCdEfGh")
        parser.add_argument("--user", help="revoke every active token of this username")

    def handle(self, *args: Any, **options: Any) -> None:
        prefix, username = options["prefix"], options["user"]
        if bool(prefix) == bool(username):
            raise CommandError("give a token prefix or --user USERNAME (one of the two)")
        tokens = ApiToken.objects.filter(revoked_at__isnull=True)
        tokens = tokens.filter(prefix=prefix[:12]) if prefix else tokens.filter(user__username=username)
        found = list(tokens.select_related("user"))
        if not found:
            raise CommandError("no active token matches")
        for token in found:
            api_token_revoke(token=token)
            self.stdout.write(f"revoked {token.prefix}… of {token.user}")
