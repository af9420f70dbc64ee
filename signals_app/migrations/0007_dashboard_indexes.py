"""Indexes for the console's dashboard (impressions, rates and revenue per placement per day over a date range).

The impression index is built concurrently (serving keeps logging impressions meanwhile), hence a non-atomic
migration. The event log is partitioned, and Postgres cannot build an index on a partitioned table concurrently:
the partial index (attributed events only) is built on every partition at once, blocking the log's appends
meanwhile; ingest goes on answering from Redis and the consumers catch up afterwards. New monthly partitions get
it when they are created or attached.
"""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("signals_app", "0006_impression_variant_rules_path"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="impression",
            index=models.Index(fields=["served_at"], include=["placement"], name="impression_served_time"),
        ),
        migrations.AddIndex(
            model_name="event",
            index=models.Index(
                condition=models.Q(attributed_slot__isnull=False),
                fields=["occurred_at"],
                include=["type", "request_id", "attributed_slot", "item_id", "value"],
                name="event_attributed_time",
            ),
        ),
    ]
