"""Merchandisers and administrators manage experiments (rules_admin.roles). Granted here as 0001 granted the first
permissions: the post_migrate sync of rules_admin.apps does not run, since Django sends post_migrate only to apps
with a models module and the console has none."""

from django.contrib.auth.management import create_permissions
from django.db import migrations


def forwards(apps, schema_editor):
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    from rules_admin.roles import roles_sync

    roles_sync(apps=apps)


class Migration(migrations.Migration):
    dependencies = [("rules_admin", "0001_roles"), ("surface_app", "0006_experiments")]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
