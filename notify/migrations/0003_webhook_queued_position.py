# The outbox is queued by each endpoint's worker from the store instead of by a hook on the ingest path.
# Endpoints that exist already had every stored event queued by that hook: they start at the store's end.

from django.db import migrations, models
from django.db.models import Max


def start_at_the_stores_end(apps, schema_editor):
    StoredEvent = apps.get_model("events", "StoredEvent")
    WebhookEndpoint = apps.get_model("notify", "WebhookEndpoint")
    end = StoredEvent.objects.aggregate(m=Max("position"))["m"] or 0
    WebhookEndpoint.objects.update(queued_position=end)


class Migration(migrations.Migration):
    dependencies = [
        ("events", "0001_initial"),
        ("notify", "0002_slack_messages"),
    ]

    operations = [
        migrations.AddField(
            model_name="webhookendpoint",
            name="queued_position",
            field=models.BigIntegerField(
                default=0,
                editable=False,
                help_text="The store's events up to this position are in this endpoint's outbox (or were "
                "skipped while it was disabled).",
            ),
        ),
        migrations.RunPython(start_at_the_stores_end, migrations.RunPython.noop),
    ]
