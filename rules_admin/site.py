"""The console's admin site: Django's, with the index in the order merchandisers and administrators use it."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.apps import AdminConfig
from django.http import HttpRequest

# Sections first by who uses them daily (merchandising), then models, schedules, signals, catalog, access.
SECTION_ORDER = [
    ("surface_app", ["Placement", "BusinessRule", "PinRule", "FrequencyCap", "FallbackList"]),
    ("rules_admin", []),
    ("models", ["ModelVersion"]),  # the model registry's versions (Graph's), a section of their own
    ("django_celery_beat", ["PeriodicTask", "IntervalSchedule", "CrontabSchedule", "ClockedSchedule", "SolarSchedule"]),
    ("signals_app", ["DeadLetter", "IdentityLink"]),
    ("graph_app", ["CustomEventType", "Event"]),
    ("personalization", ["ApiKey"]),
    ("auth", ["User", "Group"]),
    ("axes", []),
]


def _position(order: list[str], name: str) -> tuple[int, str]:
    return (order.index(name) if name in order else len(order), name)


def _model_versions_apart(apps: list[dict[str, Any]]) -> None:
    """Model versions get their own "Models" section: staff look for them beside the rules, not in the catalog's
    section of the app that stores them (Graph)."""
    for app in apps:
        if app["app_label"] != "graph_app":
            continue
        versions = [model for model in app["models"] if model["object_name"] == "ModelVersion"]
        if versions:
            app["models"].remove(versions[0])
            apps.append({"name": "Models", "app_label": "models", "app_url": app["app_url"],
                         "has_module_perms": True, "models": versions})  # fmt: skip
            if not app["models"]:
                apps.remove(app)
        return


class ConsoleSite(admin.AdminSite):
    site_header = "Personalization console"
    site_title = "Personalization console"
    index_title = "Merchandising, models, schedules, signals and access"

    def get_app_list(self, request: HttpRequest, app_label: str | None = None) -> list[dict[str, Any]]:
        apps = super().get_app_list(request, app_label)
        if app_label is None:
            tools = self._console_tools(request)
            _model_versions_apart(apps)
            if tools:
                apps.insert(0, {"name": "Console", "app_label": "console", "app_url": "", "has_module_perms": True,
                                "models": tools})  # fmt: skip
        labels = ["console", *(label for label, _ in SECTION_ORDER)]
        models = dict(SECTION_ORDER)
        apps.sort(key=lambda app: _position(labels, app["app_label"]))
        for app in apps:
            order = models.get(app["app_label"], [])
            app["models"].sort(key=lambda model: _position(order, model["object_name"]))
        return apps

    def _console_tools(self, request: HttpRequest) -> list[dict[str, Any]]:
        """The console's own pages (preview, dashboard, experiments, evaluation, blocking) on the index, for those
        allowed to see them."""
        from django.urls import reverse

        pages = [
            ("Preview and explain", "console:preview", "surface_app.view_businessrule"),
            ("Dashboard", "console:dashboard", "graph_app.view_impression"),
            ("Experiments", "console:experiments", "surface_app.view_experiment"),
            ("Off-policy evaluation", "console:policy-evaluation", "graph_app.view_modelversion"),
            ("Block a category or brand", "console:block", "surface_app.add_businessrule"),
        ]
        return [
            {"name": name, "object_name": name.replace(" ", ""), "admin_url": reverse(url), "add_url": None,
             "view_only": True, "perms": {"view": True}}
            for name, url, permission in pages
            if request.user.has_perm(permission)
        ]  # fmt: skip


class ConsoleAdminConfig(AdminConfig):
    default_site = "rules_admin.site.ConsoleSite"
