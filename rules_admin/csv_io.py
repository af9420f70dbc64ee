"""CSV import / export of business rules and fallback lists (django-import-export), validated row by row.

Each row goes through the same validation as a form (`full_clean()` and `configuration.rule_validate`), so the
admin's import report names, per row, the column whose value was refused and why; rows are written as they are
(recorded in their history like any edit) and serving learns of the import once, after it commits
(`configuration.surface_config_changed`).
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from import_export import fields, resources, widgets

from surface_app.interface import configuration
from surface_app.models import BusinessRule, Placement

LIST_SEPARATOR = ","


class _ListWidget(widgets.Widget):
    """A list of ids in one cell, comma-separated (spaces around them ignored)."""

    def clean(self, value: Any, row: Any = None, **kwargs: Any) -> list[str]:
        return [part.strip() for part in str(value or "").split(LIST_SEPARATOR) if part.strip()]

    def render(self, value: Any, obj: Any = None, **kwargs: Any) -> str:
        return LIST_SEPARATOR.join(str(part) for part in value or [])


class _ConditionWidget(widgets.JSONWidget):
    """A condition as JSON; an empty cell is no condition ({}), as the model stores it."""

    def clean(self, value: Any, row: Any = None, **kwargs: Any) -> Any:
        return super().clean(value, row, **kwargs) or {}

    def render(self, value: Any, obj: Any = None, **kwargs: Any) -> Any:
        return super().render(value, obj, **kwargs) if value else ""


class _ConfigResource(resources.ModelResource):
    def validate_instance(
        self, instance: Any, import_validation_errors: dict[str, Any] | None = None, validate_unique: bool = True
    ) -> None:
        errors = dict(import_validation_errors or {})
        try:
            instance.full_clean(exclude=errors.keys(), validate_unique=validate_unique)
        except ValidationError as error:
            errors = error.update_error_dict(errors)
        if not errors:
            try:
                self.validate_more(instance)
            except ValidationError as error:
                errors = error.update_error_dict(errors)
        if errors:
            raise ValidationError(errors)

    def validate_more(self, instance: Any) -> None:
        pass

    def after_import(self, dataset: Any, result: Any, **kwargs: Any) -> None:
        if not kwargs.get("dry_run") and not result.has_errors() and not result.has_validation_errors():
            configuration.surface_config_changed()


class BusinessRuleResource(_ConfigResource):
    placement = fields.Field(
        attribute="placement", column_name="placement", widget=widgets.ForeignKeyWidget(Placement, "name")
    )
    condition = fields.Field(attribute="condition", column_name="condition", widget=_ConditionWidget())
    audience = fields.Field(attribute="audience", column_name="audience", widget=_ConditionWidget())
    item_ids = fields.Field(attribute="item_ids", column_name="item_ids", widget=_ListWidget())

    class Meta:
        model = BusinessRule
        fields = (
            "id", "name", "kind", "placement", "priority", "enabled", "valid_from", "valid_until", "condition",
            "audience", "factor", "item_ids", "slot", "campaign",
        )  # fmt: skip
        export_order = fields
        skip_unchanged = True
        report_skipped = True

    def validate_more(self, instance: Any) -> None:
        configuration.rule_validate(rule=instance)

    def before_save_instance(self, instance: Any, row: Any, **kwargs: Any) -> None:
        # Rules of placements that require review are imported as drafts of the importing user.
        configuration.rule_draft_mark(rule=instance, user=kwargs.get("user"))


class FallbackListResource(_ConfigResource):
    """Placements' fallback chains and default lists, by placement name (placements are created in the admin)."""

    fallbacks = fields.Field(attribute="fallbacks", column_name="fallbacks", widget=_ListWidget())
    default_items = fields.Field(attribute="default_items", column_name="default_items", widget=_ListWidget())

    class Meta:
        model = Placement
        fields = ("name", "fallbacks", "default_items")
        export_order = fields
        import_id_fields = ("name",)
        skip_unchanged = True
        report_skipped = True

    def validate_more(self, instance: Any) -> None:
        if instance.pk is None:
            raise ValidationError({"name": f"No placement named '{instance.name}': create it under Placements first."})
        unknown = configuration.items_unknown(item_ids=instance.default_items)
        if unknown:
            raise ValidationError({"default_items": f"Not in the catalog: {', '.join(unknown)}."})
