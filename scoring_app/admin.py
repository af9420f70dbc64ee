from django.contrib import admin

from scoring_app.models import ModelVersion


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["version", "kind", "is_active", "created_at"]
    list_filter = ["kind", "is_active"]
    readonly_fields = ["kind", "version", "metrics", "created_at"]
