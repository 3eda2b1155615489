"""The roles of the contract: the groups, and the permissions each app grants them.

Each app declares what its permissions are for in its AppConfig (`role_permissions = {group: (perm,
...)}`), so this app, below all of them, imports none. `python manage.py setup_roles`
(accounts.services.roles_setup) creates the groups and grants what the installed apps declare; a
permission declared must exist after `migrate` (a model's Meta.permissions or a default permission).
"""

from __future__ import annotations

OPERATORS = "operators"
AUDITORS = "auditors"
AGENTS = "agents"
GROUPS = (OPERATORS, AUDITORS, AGENTS)


def roles() -> dict[str, tuple[str, ...]]:
    """Each group and its permissions ("app_label.codename"), as the installed apps declare them."""
    from django.apps import apps

    collected: dict[str, list[str]] = {group: [] for group in GROUPS}
    for config in apps.get_app_configs():
        for group, names in getattr(config, "role_permissions", {}).items():
            granted = collected.setdefault(group, [])
            granted.extend(name for name in names if name not in granted)
    return {group: tuple(names) for group, names in collected.items()}
