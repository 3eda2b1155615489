"""Writes of the accounts app: API tokens (create, use, revoke, issue) and the roles (groups and their
permissions, as each app declares them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.apps import apps
from django.contrib.auth import get_user_model
from django.contrib.auth.management import create_permissions
from django.contrib.auth.models import Group, Permission
from django.core.exceptions import ValidationError
from django.db import DatabaseError, models, transaction
from django.db.models import Q
from django.utils import timezone

from core.errors import ApplicationError

from .models import ApiToken, hash_token
from .roles import roles as declared_roles

if TYPE_CHECKING:
    from django.contrib.auth.models import User

# last_used_at is a hint for people, not an audit record: one write a minute per token at most, so
# a busy agent does not turn every request into a write.
TOKEN_USE_RESOLUTION = timedelta(minutes=1)
TOKEN_PREFIX_LENGTH = 12
TOKEN_NAME_MAX_LENGTH = 100


def api_token_create(*, user: User, name: str = "") -> str:
    """Create a token for `user` and return it raw; only its SHA-256 digest is stored."""
    if len(name) > TOKEN_NAME_MAX_LENGTH:
        raise ApplicationError(
            f"a token name has at most {TOKEN_NAME_MAX_LENGTH} characters", code="invalid_token_name"
        )
    raw = ApiToken.generate()
    ApiToken.objects.create(user=user, name=name, prefix=raw[:TOKEN_PREFIX_LENGTH], key_hash=hash_token(raw))
    return raw


def api_token_mark_used(*, token: ApiToken, now: datetime | None = None) -> bool:
    """Record that `token` was just used, at most once a minute; True if it wrote."""
    now = now or timezone.now()
    stale = now - TOKEN_USE_RESOLUTION
    if token.last_used_at is not None and token.last_used_at > stale:
        return False
    # Conditional, so concurrent requests with the same token write once.
    written = (
        ApiToken.objects.filter(pk=token.pk)
        .filter(Q(last_used_at__isnull=True) | Q(last_used_at__lte=stale))
        .update(last_used_at=now)
    )
    token.last_used_at = now
    return bool(written)


def api_token_revoke(*, token: ApiToken) -> None:
    """Revoke `token`: from now on it authenticates nobody."""
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])


@dataclass
class RolesReport:
    """What roles_setup did, one line per change (or per group already up to date)."""

    lines: list[str] = field(default_factory=list)
    changed: bool = False


def _resolve_permission(name: str) -> Permission:
    app_label, dot, codename = name.partition(".")
    if not dot or not app_label or not codename:
        raise ApplicationError(f"{name!r} is not a permission name (app_label.codename)", code="bad_role")
    try:
        app_config = apps.get_app_config(app_label)
    except LookupError:
        raise ApplicationError(
            f"permission {name!r}: no installed app is labelled {app_label!r}", code="missing_permission"
        ) from None
    found = Permission.objects.filter(content_type__app_label=app_label, codename=codename).first()
    if found is None:
        # Permissions are created by post_migrate; a database migrated before this permission was
        # declared (or flushed since) lacks it. Create the app's permissions from its models, once.
        create_permissions(app_config, verbosity=0)
        found = Permission.objects.filter(content_type__app_label=app_label, codename=codename).first()
    if found is None:
        raise ApplicationError(
            f"permission {name!r} does not exist: no model of {app_label!r} declares {codename!r}. "
            "Run `python manage.py migrate` first, or fix the app's role_permissions.",
            code="missing_permission",
        )
    return found


def roles_setup(*, roles: Mapping[str, Sequence[str]] | None = None) -> RolesReport:
    """Create the groups of `roles` and grant each its permissions (idempotent; never takes any away)."""
    report = RolesReport()
    try:
        with transaction.atomic():
            # Resolve everything first: a missing permission changes nothing.
            wanted = {
                group: [_resolve_permission(name) for name in names]
                for group, names in (declared_roles() if roles is None else roles).items()
            }
            for group_name, permissions in wanted.items():
                group, created = Group.objects.get_or_create(name=group_name)
                if created:
                    report.lines.append(f"Created group {group_name!r}.")
                have = set(group.permissions.values_list("pk", flat=True))
                missing = [p for p in permissions if p.pk not in have]
                if missing:
                    group.permissions.add(*missing)
                    granted = ", ".join(f"{p.content_type.app_label}.{p.codename}" for p in missing)
                    report.lines.append(f"Granted {group_name!r}: {granted}.")
                if created or missing:
                    report.changed = True
                else:
                    report.lines.append(f"Group {group_name!r} is up to date.")
    except DatabaseError as error:
        raise ApplicationError(
            f"the roles could not be set up ({error}); has `python manage.py migrate` run?",
            code="database_not_ready",
        ) from error
    return report


@dataclass
class IssuedToken:
    """What api_token_issue did: the raw token (shown once) and the changes made on the way."""

    token: str
    user: User
    user_created: bool
    group: str | None
    roles: RolesReport | None


def api_token_issue(*, username: str, group: str | None = None, name: str = "") -> IssuedToken:
    """A new token for `username`, creating the user (no password) and adding it to `group` if given.

    A group of accounts.roles that does not exist yet is created by running roles_setup first.
    """
    user_model = get_user_model()
    username_field = user_model._meta.get_field(user_model.USERNAME_FIELD)
    assert isinstance(username_field, models.Field)
    try:
        username = username_field.clean(username, None)
    except ValidationError as error:
        raise ApplicationError(
            f"username {username!r}: {' '.join(error.messages)}", code="invalid_user"
        ) from None
    roles_report = None
    with transaction.atomic():
        target_group = None
        if group is not None:
            target_group = Group.objects.filter(name=group).first()
            if target_group is None:
                if group not in declared_roles():
                    known = ", ".join(sorted(declared_roles()))
                    raise ApplicationError(
                        f"group {group!r} does not exist (the roles are: {known})", code="unknown_group"
                    )
                roles_report = roles_setup()
                target_group = Group.objects.get(name=group)
        user = user_model._default_manager.filter(**{user_model.USERNAME_FIELD: username}).first()
        created = user is None
        if user is None:
            user = user_model(**{user_model.USERNAME_FIELD: username})
            user.set_unusable_password()  # it authenticates with its tokens only
            user.save()
        if target_group is not None:
            target_group.user_set.add(user)
        raw = api_token_create(user=user, name=name)
    return IssuedToken(token=raw, user=user, user_created=created, group=group, roles=roles_report)
