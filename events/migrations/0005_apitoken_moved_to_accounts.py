# ApiToken moved to the accounts app (accounts/migrations/0001_initial.py): removed from this app's state
# only; the table stays, and accounts' model uses it.

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("events", "0004_purgepermit_signature"),
        ("accounts", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="ApiToken")],
            database_operations=[],
        ),
    ]
