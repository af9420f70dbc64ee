from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from graph_app.model_registry import services
from graph_app.model_registry.models import ModelVersion

CANARY_PERCENT = 10


def _figure(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-"


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
    list_display = [
        "version", "kind", "state", "canary_percent", "holdout_ndcg", "quality_gate", "promoted_at", "created_at",
    ]  # fmt: skip
    list_filter = ["kind", "state"]
    readonly_fields = [
        "kind", "version", "state", "quality_gate", "training_settings", "item_model", "metrics", "feature_names",
        "training_window_start", "training_window_end", "replaced_version", "created_at", "promoted_at",
    ]  # fmt: skip
    fields = [*readonly_fields[:3], "canary_percent", *readonly_fields[3:]]
    actions = ["promote", "canary", "rollback", "retire"]

    @admin.display(description="holdout nDCG@10")
    def holdout_ndcg(self, obj: ModelVersion) -> str:
        value = (obj.metrics or {}).get("holdout", {}).get("ndcg@10") if isinstance(obj.metrics, dict) else None
        return f"{value:.4f}" if isinstance(value, float) else "-"

    @admin.display(description="quality gate (held-out nDCG@10)")
    def quality_gate(self, obj: ModelVersion) -> str:
        """The gate's figures: this model, popularity and the model it would replace, on the same held-out users."""
        gate = obj.metrics.get("gate") if isinstance(obj.metrics, dict) else None
        if not isinstance(gate, dict):
            return "-"
        if "skipped" in gate:
            return f"not gated: {gate['skipped']}"
        figures = [f"this {_figure(gate.get('ndcg@10'))}", f"popularity {_figure(gate.get('popularity_ndcg@10'))}"]
        if gate.get("active_ndcg@10") is not None:
            figures.append(f"active {_figure(gate.get('active_ndcg@10'))}")
        verdict = "passed" if gate.get("passed") else "FAILED (not promoted)"
        return f"{verdict}: " + ", ".join(figures) + f" on {gate.get('users', '?')} users"

    @admin.display(description="settings it trained with")
    def training_settings(self, obj: ModelVersion) -> str:
        chosen = obj.metrics.get("settings") if isinstance(obj.metrics, dict) else None
        if not isinstance(chosen, dict):
            return "-"
        search = obj.metrics.get("search") or {}
        tried = len(search.get("tried") or []) if isinstance(search, dict) else 0
        found = f" (best of {tried} tried)" if tried > 1 else " (defaults, no search)" if tried <= 1 else ""
        return ", ".join(f"{name}={value}" for name, value in sorted(chosen.items())) + found

    @admin.display(description="item-to-item model")
    def item_model(self, obj: ModelVersion) -> str:
        """An embeddings version's EASE model (`graph_app.item_model`): its λ and its own gate, or why it serves no
        lists."""
        found = obj.metrics.get("item_model") if isinstance(obj.metrics, dict) else None
        if not isinstance(found, dict):
            return "-"
        gate = found.get("gate") or {}
        figures = f"this {_figure(gate.get('ndcg@10'))}, popularity {_figure(gate.get('popularity_ndcg@10'))}"
        tried = len(found.get("tried") or [])
        if found.get("regularization") is None:
            return f"serves no lists: {figures} on {gate.get('users', '?')} users"
        return f"λ={found['regularization']} (best of {tried} tried): {figures} on {gate.get('users', '?')} users"

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
