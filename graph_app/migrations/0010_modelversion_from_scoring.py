"""The model registry moves here from Score: state only (its table keeps its name and rows), and the content type
follows, so the console's permissions and history entries of model versions stay attached."""

import django.core.validators
from django.db import migrations, models


def _content_type_move(apps, source, target):
    ContentType = apps.get_model("contenttypes", "ContentType")
    ContentType.objects.filter(app_label=source, model="modelversion").update(app_label=target)


def content_type_to_graph(apps, schema_editor):
    _content_type_move(apps, "scoring_app", "graph_app")


def content_type_to_scoring(apps, schema_editor):
    _content_type_move(apps, "graph_app", "scoring_app")


class Migration(migrations.Migration):
    dependencies = [
        ("graph_app", "0009_catalog_fewer_indexes"),
        ("scoring_app", "0003_modelversion_to_graph"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="ModelVersion",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        (
                            "kind",
                            models.CharField(
                                choices=[
                                    ("embeddings", "Embeddings"),
                                    ("ranker", "Ranker (LightGBM)"),
                                    ("bandit", "Contextual bandit"),
                                ],
                                max_length=30,
                            ),
                        ),
                        ("version", models.CharField(max_length=60, unique=True)),
                        (
                            "state",
                            models.CharField(
                                choices=[
                                    ("candidate", "Candidate"),
                                    ("canary", "Canary"),
                                    ("active", "Active"),
                                    ("retired", "Retired"),
                                ],
                                default="candidate",
                                max_length=20,
                            ),
                        ),
                        (
                            "canary_percent",
                            models.PositiveSmallIntegerField(
                                default=0,
                                help_text="While a canary: the share of users (by a stable hash of the user) it serves.",
                                validators=[django.core.validators.MaxValueValidator(100)],
                            ),
                        ),
                        ("metrics", models.JSONField(blank=True, default=dict)),
                        ("feature_names", models.JSONField(blank=True, default=list)),
                        ("training_window_start", models.DateTimeField(blank=True, null=True)),
                        ("training_window_end", models.DateTimeField(blank=True, null=True)),
                        ("artifact", models.BinaryField()),
                        ("replaced_version", models.CharField(blank=True, default="", max_length=60)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("promoted_at", models.DateTimeField(blank=True, null=True)),
                    ],
                    options={
                        "db_table": "scoring_app_modelversion",
                        "ordering": ["-created_at"],
                        "constraints": [
                            models.UniqueConstraint(
                                condition=models.Q(("state", "active")),
                                fields=("kind",),
                                name="model_version_one_active_per_kind",
                            ),
                            models.UniqueConstraint(
                                condition=models.Q(("state", "canary")),
                                fields=("kind",),
                                name="model_version_one_canary_per_kind",
                            ),
                            models.CheckConstraint(
                                condition=models.Q(("canary_percent__lte", 100)), name="model_version_canary_percent"
                            ),
                        ],
                    },
                )
            ]
        ),
        migrations.RunPython(content_type_to_graph, content_type_to_scoring),
    ]
