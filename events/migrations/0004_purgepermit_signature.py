"""A purge permit's signature (audit.signing): the column is added in place, with its default in the
database (raw INSERTs, such as the test runner's flush, name no signature). On SQLite, Django's AddField
would rebuild the table, which the append-only triggers of the other tables (they read this one) forbid."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("events", "0003_admin_indexes"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AddField(
                    model_name="purgepermit",
                    name="signature",
                    field=models.TextField(blank=True, db_default="", default=""),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    "ALTER TABLE events_purgepermit ADD COLUMN signature text NOT NULL DEFAULT ''",
                    reverse_sql="ALTER TABLE events_purgepermit DROP COLUMN signature",
                ),
            ],
        ),
    ]
