"""Append-only tables, enforced by the database: triggers refuse UPDATE and DELETE (and TRUNCATE).

The one sanctioned way to delete is a purge: inside its transaction it inserts a row into
events_purgepermit, deletes, and removes the row; the triggers let DELETE through only while such a
row exists, and since it is never committed, no other transaction ever sees it.
"""

from django.db.backends.base.schema import BaseDatabaseSchemaEditor

PERMIT_TABLE = "events_purgepermit"

_POSTGRES_FUNCTION = f"""
CREATE OR REPLACE FUNCTION eventbus_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'TRUNCATE') AND EXISTS (SELECT 1 FROM {PERMIT_TABLE}) THEN
        IF TG_OP = 'DELETE' THEN
            RETURN OLD;
        END IF;
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'append-only table %: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$ LANGUAGE plpgsql;
"""


def install_append_only(schema_editor: BaseDatabaseSchemaEditor, table: str) -> None:
    """Make `table` append-only on PostgreSQL or SQLite."""
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(_POSTGRES_FUNCTION, params=None)  # no placeholders: its % are PL/pgSQL's
        schema_editor.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION eventbus_append_only()"
        )
        schema_editor.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION eventbus_append_only()"
        )
    elif vendor == "sqlite":
        schema_editor.execute(
            f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} "
            f"BEGIN SELECT RAISE(ABORT, 'append-only table {table}: UPDATE is not allowed'); END"
        )
        schema_editor.execute(
            f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} "
            f"WHEN NOT EXISTS (SELECT 1 FROM {PERMIT_TABLE}) "
            f"BEGIN SELECT RAISE(ABORT, 'append-only table {table}: DELETE is not allowed'); END"
        )
    else:
        raise NotImplementedError(f"append-only triggers are written for PostgreSQL and SQLite, not {vendor}")


def remove_append_only(schema_editor: BaseDatabaseSchemaEditor, table: str) -> None:
    """Undo install_append_only (for migrating backwards)."""
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
    elif vendor == "sqlite":
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {table}_no_update")
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")
