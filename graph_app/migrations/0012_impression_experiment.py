"""Impressions record the experiment and variant that served them, and the slate's build time and degradation
(an experiment's guardrails)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("graph_app", "0011_state_logs_from_signals"),
    ]

    operations = [
        migrations.AddField(
            model_name="impression",
            name="degraded",
            field=models.BooleanField(default=False),
        ),
        migrations.AddField(
            model_name="impression",
            name="experiment_id",
            field=models.IntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="impression",
            name="experiment_variant",
            field=models.CharField(blank=True, default="", max_length=50),
        ),
        migrations.AddField(
            model_name="impression",
            name="serving_ms",
            field=models.FloatField(blank=True, null=True),
        ),
        migrations.AddIndex(
            model_name="impression",
            index=models.Index(
                condition=models.Q(("experiment_id__isnull", False)),
                fields=["experiment_id", "served_at"],
                name="impression_experiment",
            ),
        ),
    ]
