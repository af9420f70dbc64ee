"""Experiments, under /admin/console/experiments/ (staff login; the views check the experiment permissions)."""

from django.contrib import admin
from django.urls import path

from rules_admin import experiment_views as views

urlpatterns = [
    path("", admin.site.admin_view(views.experiment_list), name="experiments"),
    path("new/", admin.site.admin_view(views.experiment_new), name="experiment-new"),
    path("<int:experiment_id>/", admin.site.admin_view(views.experiment_detail), name="experiment"),
    path("<int:experiment_id>/start/", admin.site.admin_view(views.experiment_start_view), name="experiment-start"),
    path("<int:experiment_id>/stop/", admin.site.admin_view(views.experiment_stop_view), name="experiment-stop"),
]
