"""Expire overdue approval requests by their on_expire policy (the server also sweeps every second)."""

from typing import Any

from django.core.management.base import BaseCommand

from hitl.services import approval_expire


class Command(BaseCommand):
    help = "Give overdue pending approval requests their on_expire outcome (reject by default)."

    def handle(self, *args: Any, **options: Any) -> None:
        total = 0
        while expired := approval_expire():
            total += expired
        self.stdout.write(f"Expired {total} approval request{'s' if total != 1 else ''}.")
