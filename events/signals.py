"""The bridge from Django signals into the bus: auth events and changes of bridged models.

Receivers only build an event and publish it in `transaction.on_commit`, so a change that rolls back
publishes nothing. Connected in EventsConfig.ready().
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db import models, transaction
from django.db.models.signals import m2m_changed, post_delete, post_save
from django.http import HttpRequest

from accounts.auth import forget_tokens
from accounts.models import ApiToken

from .base import BaseEvent
from .event_bus import event_bus
from .system_events import (
    ModelChangedEvent,
    OperatorLockedOutEvent,
    OperatorSignedInEvent,
    OperatorSignedOutEvent,
    OperatorSignInFailedEvent,
)

DISPATCH_PREFIX = "events.signals."


def publish_on_commit(event: BaseEvent, using: str | None = None) -> None:
    """Publish `event` once the current transaction commits (at once outside a transaction)."""
    transaction.on_commit(lambda: event_bus.publish_sync(event), using=using)


def _client_ip(request: HttpRequest | None) -> str | None:
    if request is None:
        return None
    return request.META.get("REMOTE_ADDR") or None


def on_logged_in(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    event = OperatorSignedInEvent(username=user.get_username(), ip=_client_ip(request), source="django.auth")
    event.actor = user.get_username()
    publish_on_commit(event)


def on_logged_out(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    if user is None:  # the session had no user
        return
    event = OperatorSignedOutEvent(username=user.get_username(), ip=_client_ip(request), source="django.auth")
    event.actor = user.get_username()
    publish_on_commit(event)


def _refused_while_locked_out(request: HttpRequest | None) -> bool:
    """Whether axes refused this attempt because its username is already locked out (the password was
    never checked). Axes' backend marks the request before Django sends user_login_failed; the attempt
    that reaches the limit is marked too, but only after axes counted it (axes_failures_since_start),
    whichever receiver runs first."""
    if request is None or not getattr(request, "axes_locked_out", False):
        return False
    return getattr(request, "axes_failures_since_start", None) is None


# Attributes this bridge sets on the request of a failed sign-in (see on_locked_out).
_FAILURE_PUBLISHED = "_eventbus_sign_in_failure_published"
_PENDING_LOCK_OUT = "_eventbus_pending_lock_out"


def on_login_failed(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **kwargs: Any
) -> None:
    if _refused_while_locked_out(request):
        return  # the lock-out was recorded once (on_locked_out); the tries it refuses are not
    # Django has already masked the password in `credentials`; only the name typed is kept.
    username = str(credentials.get("username") or credentials.get(get_user_model().USERNAME_FIELD) or "")[
        :150
    ]
    publish_on_commit(
        OperatorSignInFailedEvent(username=username, ip=_client_ip(request), source="django.auth")
    )
    if request is not None:
        # The failure that reaches the limit comes first in the trail, then the lock-out it caused,
        # whichever of axes' receiver and this one Django calls first.
        setattr(request, _FAILURE_PUBLISHED, True)
        pending = getattr(request, _PENDING_LOCK_OUT, None)
        if pending is not None:
            delattr(request, _PENDING_LOCK_OUT)
            publish_on_commit(pending)


def on_locked_out(
    sender: Any, request: HttpRequest | None = None, username: str | None = None, **kwargs: Any
) -> None:
    """axes' user_locked_out: sent by the failure that reaches the limit, and again for every attempt
    refused while the lock-out lasts. Only the first is an event, so the lock-out is recorded once."""
    if request is None or _refused_while_locked_out(request):
        return
    from axes.helpers import get_cool_off

    cool_off = get_cool_off(request)
    event = OperatorLockedOutEvent(
        username=str(username or "")[:150],
        ip=_client_ip(request),
        failures=int(getattr(request, "axes_failures_since_start", None) or 0),
        locked_for_s=int(cool_off.total_seconds()) if cool_off else 0,
        source="django.auth",
    )
    if getattr(request, _FAILURE_PUBLISHED, False):
        publish_on_commit(event)
    else:
        setattr(request, _PENDING_LOCK_OUT, event)  # published by on_login_failed, after the failure


def _model_label(instance: models.Model) -> str:
    return instance._meta.label_lower


def on_saved(
    sender: type[models.Model], instance: models.Model, created: bool, using: str, **kwargs: Any
) -> None:
    if kwargs.get("raw"):  # loading fixtures
        return
    update_fields = kwargs.get("update_fields")
    if update_fields is not None and set(update_fields) <= {"last_login"}:
        return  # signing in, already bridged as operator_signed_in
    event = ModelChangedEvent(
        model=_model_label(instance),
        pk=str(instance.pk),
        action="created" if created else "updated",
        label=str(instance)[:200],
        source="django.models",
    )
    publish_on_commit(event, using=using)


def on_deleted(sender: type[models.Model], instance: models.Model, using: str, **kwargs: Any) -> None:
    event = ModelChangedEvent(
        model=_model_label(instance),
        pk=str(instance.pk),
        action="deleted",
        label=str(instance)[:200],
        source="django.models",
    )
    publish_on_commit(event, using=using)


def on_groups_changed(sender: Any, instance: models.Model, action: str, using: str, **kwargs: Any) -> None:
    if action not in ("post_add", "post_remove", "post_clear"):
        return
    event = ModelChangedEvent(
        model=_model_label(instance),
        pk=str(instance.pk),
        action="groups_changed",
        label=str(instance)[:200],
        source="django.models",
    )
    publish_on_commit(event, using=using)


def connect() -> None:
    """Connect the bridge (idempotent thanks to dispatch_uid)."""
    from axes.signals import user_locked_out  # imports axes' models: only once the apps are ready

    user_logged_in.connect(on_logged_in, dispatch_uid=DISPATCH_PREFIX + "logged_in")
    user_logged_out.connect(on_logged_out, dispatch_uid=DISPATCH_PREFIX + "logged_out")
    user_login_failed.connect(on_login_failed, dispatch_uid=DISPATCH_PREFIX + "login_failed")
    user_locked_out.connect(on_locked_out, dispatch_uid=DISPATCH_PREFIX + "locked_out")
    user_model = get_user_model()
    # API tokens too: a revocation heard by the other processes empties their token caches.
    for model in (user_model, Group, ApiToken):
        post_save.connect(
            on_saved, sender=model, dispatch_uid=f"{DISPATCH_PREFIX}saved.{model._meta.label_lower}"
        )
        post_delete.connect(
            on_deleted, sender=model, dispatch_uid=f"{DISPATCH_PREFIX}deleted.{model._meta.label_lower}"
        )
    m2m_changed.connect(
        on_groups_changed, sender=user_model.groups.through, dispatch_uid=DISPATCH_PREFIX + "groups"
    )


async def forget_tokens_on_remote_change(event: BaseEvent) -> None:
    """Another process changed a user, a group or a token: who a token is may have changed."""
    if event.remote:
        forget_tokens()


def forget_tokens_on_remote_changes(bus: Any = None) -> None:
    """Subscribe forget_tokens_on_remote_change to model changes on `bus` (once)."""
    from .event_bus import event_bus

    bus = bus or event_bus
    if not any(sub.handler is forget_tokens_on_remote_change for sub in bus.subscriptions):
        bus.subscribe(event_type="model_changed", handler=forget_tokens_on_remote_change)
