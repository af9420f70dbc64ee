"""The Merchandiser and Administrator groups (rules_admin.roles), created with the permissions they need."""

from django.contrib.auth.management import create_permissions
from django.db import migrations


def forwards(apps, schema_editor):
    # Permissions are normally created after all migrations (post_migrate): create them now to grant them.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    from rules_admin.roles import roles_sync

    roles_sync(apps=apps)


class Migration(migrations.Migration):
    # Pinned, not "__latest__": that resolves to whatever is latest when migrate runs, so any later migration of
    # these apps (or a package upgrade) made this one, already applied, depend on an unapplied one and migrate
    # refuse to run. Models added later get their grants from the post_migrate sync (rules_admin.apps).
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("surface_app", "0003_rule_review"),
        ("graph_app", "0003_feature_rows"),
        ("scoring_app", "0002_model_registry"),
        ("signals_app", "0007_dashboard_indexes"),
        ("personalization", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
        ("axes", "0010_accessattemptexpiration"),
    ]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
