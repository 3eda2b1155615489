"""Writes of the events app: events recorded with a change, API tokens, and the roles."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from channels.db import database_sync_to_async
from django.apps import apps
from django.contrib.auth import get_user_model
from django.contrib.auth.management import create_permissions
from django.contrib.auth.models import Group, Permission
from django.core.exceptions import ValidationError
from django.db import DatabaseError, models, transaction
from django.db.models import Q
from django.utils import timezone

from eventbus_project.exceptions import ApplicationError

from .base import BaseEvent
from .event_bus import event_bus
from .event_store import EventRefused, EventStoreError, event_store, store_together
from .models import ApiToken, hash_token
from .roles import ROLES
from .signals import publish_on_commit

if TYPE_CHECKING:
    from django.contrib.auth.models import User

logger = logging.getLogger("events")

# last_used_at is a hint for people, not an audit record: one write a minute per token at most, so
# a busy agent does not turn every request into a write.
TOKEN_USE_RESOLUTION = timedelta(minutes=1)
TOKEN_PREFIX_LENGTH = 12
TOKEN_NAME_MAX_LENGTH = 100


async def events_publish(*, events: list[BaseEvent], actor: str | None) -> list[int | None]:
    """Publish validated events from outside (REST, OTLP) as `actor` and wait for their commit.

    All or nothing: the store writes them in one transaction. Returns their positions in list order
    (None for one a middleware dropped). A database that is away is a 503 `store_unavailable` (the same
    request again is safe: idempotent on event_id); a database that refuses an event is a 400.
    """
    for event in events:
        # Who acted is who authenticated, whatever the event's data says.
        event.actor = actor
    store_together(events)
    publishing = asyncio.ensure_future(event_bus.publish_many(events, wait_for_handlers=True))
    # Already validated and on its way: a client that hangs up must not stop a list half-published.
    publishing.add_done_callback(_consume_outcome)
    try:
        results = await asyncio.shield(publishing)
    except EventRefused as error:
        # The database refused an event itself: none of the request's events is stored, and sending
        # the same body again would fail the same way.
        raise ApplicationError(
            f"The store refused the events, and stored none of them: {error}",
            code="invalid_event",
            status=400,
        ) from error
    except (EventStoreError, DatabaseError) as error:
        logger.warning("the store could not commit %d published events: %s", len(events), error)
        raise ApplicationError(
            "The event store could not commit the events; send the same events again (it is idempotent "
            "on event_id).",
            code="store_unavailable",
            status=503,
            headers={"Retry-After": "1"},
        ) from error
    positions: list[int | None] = [event.position for event in events]
    unknown = [e.event_id for e, p, ok in zip(events, positions, results, strict=True) if ok and p is None]
    if unknown:
        # A middleware replaced the event object: the store numbered the replacement.
        from .selectors import stored_positions

        found = await database_sync_to_async(stored_positions, thread_sensitive=False)(event_ids=unknown)
        positions = [
            found.get(e.event_id) if p is None else p for e, p in zip(events, positions, strict=True)
        ]
    return positions


def _consume_outcome(task: asyncio.Future[Any]) -> None:
    # When the client is gone nobody awaits the task; its failure is logged by the store already.
    if not task.cancelled():
        task.exception()


def events_record(*, events: list[BaseEvent]) -> list[int]:
    """Store `events` in the caller's transaction and publish them on the bus once it commits.

    For changes whose record must not come apart from them: the row, its stored event and its audit
    entry (the store's batch hooks run here too) commit together or not at all. Returns the positions.
    """
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("events_record needs the caller's transaction (transaction.atomic)")
    for event in events:
        event_bus.stamp(event)
    positions = event_store.store_in_transaction(events)
    for event in events:
        publish_on_commit(event)
    return positions


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
            "Run `python manage.py migrate` first, or fix events/roles.py.",
            code="missing_permission",
        )
    return found


def roles_setup(*, roles: Mapping[str, Sequence[str]] = ROLES) -> RolesReport:
    """Create the groups of `roles` and grant each its permissions (idempotent; never takes any away)."""
    report = RolesReport()
    try:
        with transaction.atomic():
            # Resolve everything first: a missing permission changes nothing.
            wanted = {group: [_resolve_permission(name) for name in names] for group, names in roles.items()}
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

    A group of events.roles that does not exist yet is created by running roles_setup first.
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
                if group not in ROLES:
                    known = ", ".join(sorted(ROLES))
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
