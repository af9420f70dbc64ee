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
    dependencies = [
        ("auth", "__latest__"),
        ("contenttypes", "__latest__"),
        ("surface_app", "0003_rule_review"),
        ("graph_app", "__latest__"),
        ("scoring_app", "__latest__"),
        ("signals_app", "__latest__"),
        ("personalization", "__latest__"),
        ("django_celery_beat", "__latest__"),
        ("axes", "__latest__"),
    ]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
