"""The merchandiser console's own pages, under /admin/console/ (staff login, the admin's look)."""

from django.urls import include, path

urlpatterns = [
    path("preview/", include("rules_admin.preview_urls")),
    path("dashboard/", include("rules_admin.dashboard_urls")),
    path("experiments/", include("rules_admin.experiment_urls")),
    path("conditions/", include("rules_admin.condition_urls")),
    path("evaluation/", include("rules_admin.policy_evaluation_urls")),
]
