from django.db import migrations

from events.db_triggers import install_append_only, remove_append_only


def forwards(apps, schema_editor):
    install_append_only(schema_editor, "audit_auditentry")


def backwards(apps, schema_editor):
    remove_append_only(schema_editor, "audit_auditentry")


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_initial"), ("events", "0002_append_only")]
    operations = [migrations.RunPython(forwards, backwards)]
