"""Impressions keep the assignment unit their experiment variant was drawn by: the shopper its results count."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("graph_app", "0013_ranker_slates"),
    ]

    operations = [
        migrations.AddField(
            model_name="impression",
            name="experiment_unit",
            field=models.CharField(blank=True, default="", max_length=220),
        ),
    ]
