"""A trigram index for the admin's search by any part of a session id, at a million rows: PostgreSQL
only. On other databases nothing is created; the search there is by prefix, which the existing
(session_id, ...) B-tree index serves. The index is not in the model's state: it is the database's
business, and makemigrations on SQLite need not know it."""

from django.contrib.postgres.operations import TrigramExtension
from django.db import migrations

INDEX = "audit_session_trgm"


def create(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(
        f'CREATE INDEX IF NOT EXISTS "{INDEX}" ON "audit_auditentry" USING gin ("session_id" gin_trgm_ops)'
    )


def drop(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(f'DROP INDEX IF EXISTS "{INDEX}"')


class Migration(migrations.Migration):
    dependencies = [("audit", "0004_evidence")]

    operations = [
        TrigramExtension(),  # a no-op on any database but PostgreSQL
        migrations.RunPython(create, drop),
    ]
