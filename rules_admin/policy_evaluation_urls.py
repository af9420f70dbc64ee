"""Off-policy evaluation, under /admin/console/evaluation/ (staff login; the view checks the permission)."""

from django.contrib import admin
from django.urls import path

from rules_admin import policy_evaluation_views

urlpatterns = [
    path("", admin.site.admin_view(policy_evaluation_views.policy_evaluation_page), name="policy-evaluation"),
]
