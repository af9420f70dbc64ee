from django.urls import path

from rules_admin.dashboard_views import dashboard

urlpatterns = [
    path("", dashboard, name="dashboard"),
]
