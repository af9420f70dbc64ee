"""The Surface configuration in the admin (the merchandiser console builds on these, `rules_admin/`): thin, every
write goes through `surface_app.configuration` so serving learns of it within seconds."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from surface_app import configuration
from surface_app.models import BusinessRule, FrequencyCap, Placement


class _ServiceAdmin(admin.ModelAdmin):
    save_service: Any = None
    delete_service: Any = None
    argument = ""

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        type(self).save_service(**{self.argument: obj})

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        type(self).delete_service(**{self.argument: obj})

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        for obj in queryset:
            type(self).delete_service(**{self.argument: obj})


class _RuleForm(forms.ModelForm):
    class Meta:
        model = BusinessRule
        fields = [
            "name", "kind", "placement", "priority", "enabled", "valid_from", "valid_until", "condition", "audience",
            "factor", "item_ids", "slot", "campaign",
        ]  # fmt: skip

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        try:
            configuration.rule_validate(rule=self.instance.__class__(**{
                name: cleaned.get(name) for name in (
                    "name", "kind", "placement", "priority", "valid_from", "valid_until", "condition", "audience",
                    "factor", "item_ids", "slot", "campaign",
                )
            }))  # fmt: skip
        except ValidationError as error:
            for field, messages in error.message_dict.items():
                self.add_error(field if field in self.fields else None, messages)
        return cleaned


@admin.register(Placement)
class PlacementAdmin(_ServiceAdmin):
    save_service = configuration.placement_save
    delete_service = configuration.placement_delete
    argument = "placement"
    list_display = ["name", "title", "context", "size", "scorer", "deadline_ms", "enabled"]
    list_filter = ["context", "scorer", "enabled"]
    search_fields = ["name", "title"]


@admin.register(BusinessRule)
class BusinessRuleAdmin(_ServiceAdmin):
    form = _RuleForm
    save_service = configuration.rule_save
    delete_service = configuration.rule_delete
    argument = "rule"
    list_display = ["name", "kind", "placement", "priority", "valid_from", "valid_until", "enabled"]
    list_filter = ["kind", "placement", "enabled"]
    search_fields = ["name", "campaign"]


@admin.register(FrequencyCap)
class FrequencyCapAdmin(_ServiceAdmin):
    save_service = configuration.cap_save
    delete_service = configuration.cap_delete
    argument = "cap"
    list_display = ["name", "scope", "placement", "max_impressions", "window_seconds", "enabled"]
    list_filter = ["scope", "placement", "enabled"]
