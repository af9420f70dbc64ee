from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from scoring_app import services
from scoring_app.models import ModelVersion

CANARY_PERCENT = 10


def _one(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet) -> ModelVersion | None:
    if queryset.count() != 1:
        modeladmin.message_user(request, "Select exactly one version.", messages.ERROR)
        return None
    return queryset.get()


def _report(modeladmin: admin.ModelAdmin, request: HttpRequest, action, success: str) -> None:
    try:
        result = action()
    except ValidationError as error:
        modeladmin.message_user(request, "; ".join(error.messages), messages.ERROR)
        return
    modeladmin.message_user(request, success.format(version=result.version), messages.SUCCESS)


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["version", "kind", "state", "canary_percent", "holdout_ndcg", "promoted_at", "created_at"]
    list_filter = ["kind", "state"]
    readonly_fields = [
        "kind", "version", "state", "metrics", "feature_names", "training_window_start", "training_window_end",
        "replaced_version", "created_at", "promoted_at",
    ]  # fmt: skip
    fields = [*readonly_fields[:3], "canary_percent", *readonly_fields[3:]]
    actions = ["promote", "canary", "rollback", "retire"]

    @admin.display(description="holdout nDCG@10")
    def holdout_ndcg(self, obj: ModelVersion) -> str:
        value = (obj.metrics or {}).get("holdout", {}).get("ndcg@10") if isinstance(obj.metrics, dict) else None
        return f"{value:.4f}" if isinstance(value, float) else "-"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # versions come from training runs

    def save_model(self, request: HttpRequest, obj: ModelVersion, form, change: bool) -> None:
        if obj.state == ModelVersion.State.CANARY and "canary_percent" in form.changed_data:
            services.model_version_canary(model_version=obj, percent=obj.canary_percent)
        # Other fields are read-only: state changes go through the actions.

    @admin.action(permissions=["change"], description="Promote to active (the current active one retires)")
    def promote(self, request: HttpRequest, queryset: QuerySet) -> None:
        if chosen := _one(self, request, queryset):
            _report(self, request, lambda: services.model_version_promote(model_version=chosen), "{version} is active.")

    @admin.action(
        permissions=["change"],
        description=f"Canary: serve to {CANARY_PERCENT}%% of users (edit the share on the version)",
    )
    def canary(self, request: HttpRequest, queryset: QuerySet) -> None:
        if chosen := _one(self, request, queryset):
            _report(
                self, request, lambda: services.model_version_canary(model_version=chosen, percent=CANARY_PERCENT),
                f"{{version}} serves {CANARY_PERCENT}% of users.",
            )  # fmt: skip

    @admin.action(
        permissions=["change"],
        description="Roll back: the selected kind's active version retires, the one before serves",
    )
    def rollback(self, request: HttpRequest, queryset: QuerySet) -> None:
        if chosen := _one(self, request, queryset):
            _report(
                self, request, lambda: services.model_version_rollback(kind=chosen.kind), "{version} is active again."
            )

    @admin.action(permissions=["change"], description="Retire")
    def retire(self, request: HttpRequest, queryset: QuerySet) -> None:
        if chosen := _one(self, request, queryset):
            _report(self, request, lambda: services.model_version_retire(model_version=chosen), "{version} retired.")
