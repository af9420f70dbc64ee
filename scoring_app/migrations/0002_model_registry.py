"""Model registry: life-cycle states instead of a flag (is_active=True becomes state='active', the rest retired),
canary share, training window, feature list, the version a promotion replaced."""

import django.core.validators
from django.db import migrations, models


def states_from_flags(apps, schema_editor):
    ModelVersion = apps.get_model("scoring_app", "ModelVersion")
    ModelVersion.objects.filter(is_active=True).update(state="active", promoted_at=models.F("created_at"))
    ModelVersion.objects.filter(is_active=False).update(state="retired")


def flags_from_states(apps, schema_editor):
    ModelVersion = apps.get_model("scoring_app", "ModelVersion")
    ModelVersion.objects.filter(state="active").update(is_active=True)


class Migration(migrations.Migration):
    dependencies = [("scoring_app", "0001_initial")]

    operations = [
        migrations.RemoveConstraint(model_name="modelversion", name="model_version_one_active_per_kind"),
        migrations.AddField(
            model_name="modelversion",
            name="state",
            field=models.CharField(
                choices=[("candidate", "Candidate"), ("canary", "Canary"), ("active", "Active"), ("retired", "Retired")],
                default="candidate",
                max_length=20,
            ),
        ),
        migrations.AddField(
            model_name="modelversion",
            name="canary_percent",
            field=models.PositiveSmallIntegerField(
                default=0,
                help_text="While a canary: the share of users (by a stable hash of the user) it serves.",
                validators=[django.core.validators.MaxValueValidator(100)],
            ),
        ),
        migrations.AddField(model_name="modelversion", name="feature_names", field=models.JSONField(blank=True, default=list)),
        migrations.AddField(
            model_name="modelversion", name="training_window_start", field=models.DateTimeField(blank=True, null=True)
        ),
        migrations.AddField(
            model_name="modelversion", name="training_window_end", field=models.DateTimeField(blank=True, null=True)
        ),
        migrations.AddField(
            model_name="modelversion",
            name="replaced_version",
            field=models.CharField(blank=True, default="", max_length=60),
        ),
        migrations.AddField(model_name="modelversion", name="promoted_at", field=models.DateTimeField(blank=True, null=True)),
        migrations.AlterField(
            model_name="modelversion",
            name="kind",
            field=models.CharField(
                choices=[("embeddings", "Embeddings"), ("ranker", "Ranker (LightGBM)"), ("bandit", "Contextual bandit")],
                max_length=30,
            ),
        ),
        migrations.RunPython(states_from_flags, flags_from_states),
        migrations.RemoveField(model_name="modelversion", name="is_active"),
        migrations.AddConstraint(
            model_name="modelversion",
            constraint=models.UniqueConstraint(
                condition=models.Q(("state", "active")), fields=("kind",), name="model_version_one_active_per_kind"
            ),
        ),
        migrations.AddConstraint(
            model_name="modelversion",
            constraint=models.UniqueConstraint(
                condition=models.Q(("state", "canary")), fields=("kind",), name="model_version_one_canary_per_kind"
            ),
        ),
        migrations.AddConstraint(
            model_name="modelversion",
            constraint=models.CheckConstraint(
                condition=models.Q(("canary_percent__lte", 100)), name="model_version_canary_percent"
            ),
        ),
    ]
