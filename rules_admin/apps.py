from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _roles_sync(*, apps: Any, **kwargs: Any) -> None:
    """After every migrate (and a test database's flush): the roles exist with every permission they should have,
    including those of models added since the roles' migration."""
    from rules_admin.roles import roles_sync

    roles_sync(apps=apps)


class RulesAdminConfig(AppConfig):
    name = "rules_admin"
    verbose_name = "Merchandiser console"

    def ready(self) -> None:
        # The console is the last app with models: when its post_migrate runs, every app's permissions exist.
        post_migrate.connect(_roles_sync, sender=self, dispatch_uid="rules_admin.roles")
