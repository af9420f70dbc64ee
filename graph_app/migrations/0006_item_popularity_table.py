"""Item popularity moves out of the catalog into a table of its own: an indexed column of `graph_app_item`
made each refresh a non-HOT update of every popular item, and so an insertion into the HNSW index per item
(BENCHMARKS.md, "Training at 1 M items"). The scores already computed are kept."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("graph_app", "0005_item_fillfactor")]

    operations = [
        migrations.CreateModel(
            name="ItemPopularity",
            fields=[
                ("item_id", models.CharField(max_length=200, primary_key=True, serialize=False)),
                ("category", models.CharField(blank=True, default="", max_length=200)),
                ("score", models.FloatField()),
            ],
            options={
                "verbose_name": "item popularity",
                "verbose_name_plural": "item popularity",
                "indexes": [
                    models.Index(models.OrderBy(models.F("score"), descending=True), name="item_popularity_score"),
                    models.Index(
                        models.F("category"),
                        models.OrderBy(models.F("score"), descending=True),
                        name="item_popularity_category",
                    ),
                ],
            },
        ),
        migrations.RunSQL(
            "INSERT INTO graph_app_itempopularity (item_id, category, score) "
            "SELECT external_id, category, popularity FROM graph_app_item WHERE popularity > 0",
            reverse_sql="UPDATE graph_app_item AS i SET popularity = p.score "
            "FROM graph_app_itempopularity p WHERE p.item_id = i.external_id",
        ),
        migrations.RemoveField(model_name="item", name="popularity"),
    ]
