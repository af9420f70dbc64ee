"""The condition builder's endpoints and the block page, under /admin/console/conditions/ (staff login; the views
check the rule permissions)."""

from django.contrib import admin
from django.urls import path

from rules_admin import condition_views

urlpatterns = [
    path("values/", admin.site.admin_view(condition_views.condition_values), name="condition-values"),
    path("count/", admin.site.admin_view(condition_views.condition_count), name="condition-count"),
    path("block/", admin.site.admin_view(condition_views.block_page), name="block"),
]
