"""An index for the "fresh" source's newest items (`scoring_app.engine.retrieval._FRESH_SQL`): without it each
rebuild of the shared list scanned the whole catalog. `created_at` never changes, so price and stock updates stay
heap-only. Built concurrently: a large catalog keeps taking writes meanwhile."""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("graph_app", "0006_item_popularity_table")]

    operations = [
        AddIndexConcurrently(
            model_name="item",
            index=models.Index(models.OrderBy(models.F("created_at"), descending=True), name="item_created_at"),
        )
    ]
