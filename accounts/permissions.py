"""DRF permission classes of the roles in accounts.roles."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request


class HasMethodPermission(BasePermission):
    """Allow a method when the user has the Django permission the view names for it.

    The view declares `required_permissions = {"POST": "events.publish_events", ...}`; a method it
    does not name is refused, so adding a handler without a permission fails closed.
    """

    message = "You do not have permission to perform this action."

    def has_permission(self, request: Request, view: Any) -> bool:
        method = request.method or ""
        if method == "OPTIONS" or not hasattr(view, method.lower()):
            return True  # OPTIONS describes the view; a method it lacks gets its 405
        required: dict[str, str] = getattr(view, "required_permissions", {})
        permission = required.get(method)
        if permission is None:
            return False
        if request.user.has_perm(permission):
            return True
        self.message = f"{method} {request.path} needs the {permission} permission."
        return False
