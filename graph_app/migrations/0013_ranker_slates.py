"""Ranker-served impressions record their logging propensity apart from the bandit's, and the ranker's logged
pools (what off-policy evaluation scores a candidate ranking on) get their table."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("graph_app", "0012_impression_experiment"),
    ]

    operations = [
        migrations.AddField(
            model_name="impression",
            name="logging_propensity",
            field=models.FloatField(blank=True, null=True),
        ),
        migrations.CreateModel(
            name="RankerSlate",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("request_id", models.CharField(max_length=100, unique=True)),
                ("placement", models.CharField(max_length=100)),
                ("served_at", models.DateTimeField()),
                ("model_version", models.CharField(blank=True, default="", max_length=60)),
                ("feature_names", models.JSONField(default=list)),
                ("item_ids", models.JSONField(default=list)),
                ("features", models.BinaryField()),
                ("logging_scores", models.JSONField(default=list)),
                ("policy", models.JSONField(default=dict)),
                ("shown", models.JSONField(default=list)),
            ],
            options={
                "db_table": "graph_app_rankerslate",
                "ordering": ["-served_at"],
                "indexes": [
                    models.Index(fields=["placement", "-served_at"], name="ranker_slate_placement_time"),
                    models.Index(fields=["served_at"], name="ranker_slate_time"),
                ],
            },
        ),
    ]
