"""Preview and explain, under /admin/console/preview/ (staff login; the views check the rule permissions)."""

from django.contrib import admin
from django.urls import path

from rules_admin import preview_views

urlpatterns = [
    path("", admin.site.admin_view(preview_views.preview_page), name="preview"),
    path("save/", admin.site.admin_view(preview_views.preview_save), name="preview-save"),
]
