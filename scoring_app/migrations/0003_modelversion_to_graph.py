"""The model registry moves to Graph (`graph_app.model_registry`): Score forgets the model, the table stays."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("scoring_app", "0002_model_registry")]

    operations = [
        migrations.SeparateDatabaseAndState(state_operations=[migrations.DeleteModel(name="ModelVersion")]),
    ]
