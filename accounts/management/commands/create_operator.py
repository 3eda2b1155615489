"""Create (or update) a person who signs in to the admin and the approval page."""

import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from accounts.roles import AUDITORS, OPERATORS
from accounts.services import roles_setup


class Command(BaseCommand):
    help = (
        "Create a staff account in the operators (or auditors) group with a random password, printed once; "
        "for an existing account, add the group and staff status (the password is kept)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--group", choices=[OPERATORS, AUDITORS], default=OPERATORS)

    def handle(self, *args: Any, **options: Any) -> None:
        username = options["username"].strip()
        if not username:
            raise CommandError("a username is required")
        if not Group.objects.filter(name=options["group"]).exists():
            roles_setup()
        user_model = get_user_model()
        with transaction.atomic():
            user = user_model._default_manager.filter(**{user_model.USERNAME_FIELD: username}).first()
            password = None
            if user is None:
                user = user_model(**{user_model.USERNAME_FIELD: username})
                password = secrets.token_urlsafe(12)
                user.set_password(password)
            user.is_staff = True  # the admin lets in staff only
            user.save()
            user.groups.add(Group.objects.get(name=options["group"]))
        if password is None:
            self.stdout.write(f"{username} is now a staff member of {options['group']} (password unchanged).")
        else:
            self.stdout.write(f"Created {username} in {options['group']} with password: {password}")
