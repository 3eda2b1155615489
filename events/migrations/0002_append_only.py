from django.db import migrations

from events.db_triggers import install_append_only, remove_append_only


def forwards(apps, schema_editor):
    install_append_only(schema_editor, "events_storedevent")
    apps.get_model("events", "PositionCounter").objects.using(schema_editor.connection.alias).get_or_create(
        id=1, defaults={"value": 0}
    )


def backwards(apps, schema_editor):
    remove_append_only(schema_editor, "events_storedevent")


class Migration(migrations.Migration):
    dependencies = [("events", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards)]
