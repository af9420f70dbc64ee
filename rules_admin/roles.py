"""The console's two roles, as Django groups: merchandisers steer what shoppers see (placements, rules, pins, caps,
fallback lists, experiments) and read the rest; administrators also manage API keys, models, schedules, event
types, dead letters and locked-out logins. Every admin view checks these permissions (Django's model permissions)."""

from __future__ import annotations

from typing import Any

MERCHANDISER = "Merchandiser"
ADMINISTRATOR = "Administrator"
ALL = ("add", "change", "delete", "view")

# (app label, model name or "*", actions)
MERCHANDISER_PERMISSIONS: list[tuple[str, str, tuple[str, ...]]] = [
    ("surface_app", "placement", ALL),
    ("surface_app", "businessrule", ALL),
    ("surface_app", "pinrule", ALL),
    ("surface_app", "frequencycap", ALL),
    ("surface_app", "fallbacklist", ("change", "view")),
    ("surface_app", "experiment", ALL),
    ("surface_app", "historicalplacement", ("view",)),
    ("surface_app", "historicalbusinessrule", ("view",)),
    ("surface_app", "historicalfrequencycap", ("view",)),
    ("graph_app", "*", ("view",)),
    ("graph_app", "modelversion", ("view",)),
    ("graph_app", "impression", ("view",)),
    ("graph_app", "event", ("view",)),
    ("graph_app", "customeventtype", ("view",)),
]
ADMINISTRATOR_PERMISSIONS: list[tuple[str, str, tuple[str, ...]]] = [
    *MERCHANDISER_PERMISSIONS,
    ("personalization", "apikey", ALL),
    ("graph_app", "modelversion", ALL),
    ("django_celery_beat", "*", ALL),
    ("graph_app", "customeventtype", ALL),
    ("signals_app", "deadletter", ALL),
    ("signals_app", "*", ("view",)),
    ("axes", "*", ("view", "delete")),
]


# Approving drafts of placements that require review (any user can be given it alone, as a reviewer).
ADMINISTRATOR_EXTRA = [("surface_app", "publish_rule")]


def _permissions(permission_model: Any, spec: list[tuple[str, str, tuple[str, ...]]]) -> list[Any]:
    chosen = []
    for app_label, model, actions in spec:
        rows = permission_model.objects.filter(content_type__app_label=app_label)
        if model != "*":
            rows = rows.filter(content_type__model=model)
        for permission in rows.select_related("content_type"):
            if permission.codename == f"{permission.codename.split('_', 1)[0]}_{permission.content_type.model}" and (
                permission.codename.split("_", 1)[0] in actions
            ):
                chosen.append(permission)
    return chosen


def roles_sync(*, apps: Any) -> None:
    """Creates both groups and grants their permissions; idempotent (grants are added, never removed, so what an
    operator granted by hand stays)."""
    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    for name, spec in ((MERCHANDISER, MERCHANDISER_PERMISSIONS), (ADMINISTRATOR, ADMINISTRATOR_PERMISSIONS)):
        group, _ = group_model.objects.get_or_create(name=name)
        group.permissions.add(*_permissions(permission_model, spec))
        if name == ADMINISTRATOR:
            for app_label, codename in ADMINISTRATOR_EXTRA:
                group.permissions.add(
                    *permission_model.objects.filter(content_type__app_label=app_label, codename=codename)
                )
