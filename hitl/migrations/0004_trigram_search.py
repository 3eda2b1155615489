"""Trigram indexes for the admin's search of approval requests (a tool, agent or session by any part of
it, at a million rows): PostgreSQL only. On other databases nothing is created; the search there is by
prefix, which the existing B-tree indexes serve. The indexes are not in the models' state: they are
the database's business, and makemigrations on SQLite need not know them."""

from django.contrib.postgres.operations import TrigramExtension
from django.db import migrations

TABLE = "hitl_approvalrequest"
FIELDS = ("tool_name", "agent", "session_id")


def create(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for field in FIELDS:
        schema_editor.execute(
            f'CREATE INDEX IF NOT EXISTS "approval_{field}_trgm" ON "{TABLE}" '
            f'USING gin ("{field}" gin_trgm_ops)'
        )


def drop(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for field in FIELDS:
        schema_editor.execute(f'DROP INDEX IF EXISTS "approval_{field}_trgm"')


class Migration(migrations.Migration):
    dependencies = [("hitl", "0003_approval_policies")]

    operations = [
        TrigramExtension(),  # a no-op on any database but PostgreSQL
        migrations.RunPython(create, drop),
    ]
