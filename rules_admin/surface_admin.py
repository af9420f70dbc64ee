"""The Surface configuration in the merchandiser console: thin, every write goes through `surface_app.configuration`
so serving learns of it within seconds. Every change is recorded (django-simple-history) and a recorded version can
be restored in one click, through the same services. It lives in the console, not in `surface_app`, because it
uses the console's widgets, CSV formats and selectors, and the console sits above Surface."""

from __future__ import annotations

import copy
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.views.decorators.http import require_POST
from import_export.admin import ImportExportMixin
from import_export.formats.base_formats import CSV
from simple_history.admin import SimpleHistoryAdmin

from rules_admin.condition_widget import ConditionBuilderWidget
from rules_admin.csv_io import BusinessRuleResource, FallbackListResource
from rules_admin.selectors import placement_rules_in_order
from surface_app.interface import Conflict, RuleRef, configuration, placement_conflicts
from surface_app.models import FALLBACKS, BusinessRule, FallbackList, FrequencyCap, PinRule, Placement

FALLBACK_STEPS = len(FALLBACKS)
FALLBACK_LABELS = {
    "popular": "Popular items",
    "session": "From the session's own items",
    "last_slate": "The last shelf shown to the user",
    "default_list": "The default list below",
}


class ItemIdsField(forms.Field):
    """Item ids, one per line (commas work too), stored as a list."""

    widget = forms.Textarea(attrs={"rows": 4, "cols": 40})

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list):
            return "\n".join(str(item_id) for item_id in value)
        return value

    def to_python(self, value: Any) -> list[str]:
        if isinstance(value, list):
            return [str(item_id) for item_id in value]
        return [part.strip() for part in str(value or "").replace(",", "\n").splitlines() if part.strip()]


class FallbackChainWidget(forms.MultiWidget):
    def __init__(self) -> None:
        choices = [("", "-"), *FALLBACK_LABELS.items()]
        super().__init__([forms.Select(choices=choices) for _ in range(FALLBACK_STEPS)])

    def decompress(self, value: Any) -> list[Any]:
        steps = list(value or [])
        return [*steps, *[None] * (FALLBACK_STEPS - len(steps))][:FALLBACK_STEPS]


class FallbackChainField(forms.MultiValueField):
    """The fallback chain as up to four steps, each picked from a list, in order."""

    widget = FallbackChainWidget

    def __init__(self, **kwargs: Any) -> None:
        choices = [("", "-"), *FALLBACK_LABELS.items()]
        fields = [forms.ChoiceField(choices=choices, required=False) for _ in range(FALLBACK_STEPS)]
        super().__init__(fields=fields, require_all_fields=False, required=False, **kwargs)

    def compress(self, data_list: list[Any]) -> list[str]:
        steps = [step for step in data_list or [] if step]
        repeated = sorted({step for step in steps if steps.count(step) > 1})
        if repeated:
            raise ValidationError(f"Each fallback once: {', '.join(FALLBACK_LABELS[step] for step in repeated)}.")
        return steps


def _fallback_fields() -> dict[str, forms.Field]:
    return {
        "fallbacks": FallbackChainField(
            label="Fallback chain",
            help_text="What serves, in this order, when the personal shelf cannot (too slow, or nothing known).",
        ),
        "default_items": ItemIdsField(
            required=False, label="Default list", help_text="Item ids, one per line: the last-resort shelf."
        ),
    }


class _PlacementForm(forms.ModelForm):
    fallbacks = _fallback_fields()["fallbacks"]
    default_items = _fallback_fields()["default_items"]

    def clean_default_items(self) -> list[str]:
        items = self.cleaned_data.get("default_items") or []
        unknown = configuration.items_unknown(item_ids=items)
        if unknown:
            raise ValidationError(f"Not in the catalog: {', '.join(unknown)}.")
        return items


class _RuleForm(forms.ModelForm):
    item_ids = ItemIdsField(
        required=False, label="Item ids", help_text="Pin: the one item; block list: the items, one per line."
    )

    class Meta:
        model = BusinessRule
        fields = [
            "name", "kind", "placement", "priority", "enabled", "valid_from", "valid_until", "condition", "audience",
            "factor", "item_ids", "slot", "campaign", "caps_apply",
        ]  # fmt: skip
        # Rows picked from the catalog over the JSON box (which stays, for power users: "Edit as JSON"); the
        # audience's rows are on users' traits.
        widgets = {"condition": ConditionBuilderWidget(), "audience": ConditionBuilderWidget(mode="audience")}
        help_texts = {
            "condition": "Which items the rule touches: every row must hold (none: every item). As JSON: "
            '{"field": "category", "op": "eq", "value": "mugs"} or a list of them.',
            "audience": "Which users the rule applies to: every row must hold (none: everyone). As JSON: "
            '{"field": "traits.age", "op": "lt", "value": 18} or a list of them.',
        }

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        # The instance as it would be saved (with its id, so that it is not compared with itself).
        rule = copy.copy(self.instance)
        rule.__class__ = BusinessRule
        for name in self._meta.fields or []:
            if name in cleaned:
                setattr(rule, name, cleaned[name])
        if getattr(self, "fixed_kind", None):
            rule.kind = self.fixed_kind  # type: ignore[attr-defined]
        rule.condition = rule.condition or {}
        rule.audience = rule.audience or {}
        try:
            configuration.rule_validate(rule=rule)
        except ValidationError as error:
            for field, messages_ in error.message_dict.items():
                if field in self.fields and field not in self.errors:
                    self.add_error(field, messages_)
                elif field not in self.fields:
                    self.add_error(None, [f"{field}: {message}" for message in messages_])
        return cleaned


class _PinForm(_RuleForm):
    fixed_kind = BusinessRule.Kind.PIN

    class Meta(_RuleForm.Meta):
        model = PinRule
        fields = [
            "name", "campaign", "placement", "slot", "item_ids", "priority", "enabled", "valid_from", "valid_until",
            "audience", "caps_apply",
        ]  # fmt: skip


class _CapForm(forms.ModelForm):
    class Meta:
        model = FrequencyCap
        fields = ["name", "scope", "placement", "max_impressions", "window_seconds", "enabled"]
        help_texts = {
            "scope": "A pinned item passes item, category and entity caps (they still count it) unless its pin "
            'says "Frequency caps apply to this pin"; campaign caps exist to cap pins.',
        }

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        cap = FrequencyCap(**{name: cleaned.get(name) for name in ("scope", "max_impressions", "window_seconds")})
        try:
            configuration.cap_validate(cap=cap)
        except ValidationError as error:
            for field, messages_ in error.message_dict.items():
                self.errors.pop(field, None)  # the friendlier message replaces the validator's
                self.add_error(field, messages_)
        return cleaned


class _ServiceAdmin(SimpleHistoryAdmin):
    """Writes through the configuration services; the history lists every version with a one-click revert."""

    save_service: Any = None
    delete_service: Any = None
    argument = ""
    object_history_list_template = "rules_admin/history_list.html"

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        obj._history_user = request.user
        type(self).save_service(**{self.argument: obj})

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        type(self).delete_service(**{self.argument: obj})

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        for obj in queryset:
            type(self).delete_service(**{self.argument: obj})

    def get_urls(self) -> list[Any]:
        info = self.opts.app_label, self.opts.model_name
        revert = path(
            "<path:object_id>/history/<int:history_id>/revert/",
            self.admin_site.admin_view(require_POST(self.revert_view)),
            name="{}_{}_revert".format(*info),
        )
        return [revert, *super().get_urls()]

    def revert_view(self, request: HttpRequest, object_id: str, history_id: int) -> HttpResponse:
        """Restores one recorded version: validated and saved like an edit, and recorded as a change of its own."""
        history = self.model.history.model  # type: ignore[attr-defined]
        record = get_object_or_404(history, history_id=history_id, id=object_id)
        if not self.has_change_permission(request, record.instance):
            raise PermissionDenied
        info = self.opts.app_label, self.opts.model_name
        try:
            configuration.history_revert(record=record, user=request.user)
        except ValidationError as error:
            self.message_user(request, f"Could not revert: {'; '.join(error.messages)}", messages.ERROR)
            return HttpResponseRedirect(reverse("admin:{}_{}_history".format(*info), args=[object_id]))
        self.message_user(
            request, f"Reverted to the version of {record.history_date:%Y-%m-%d %H:%M:%S} UTC.", messages.SUCCESS
        )
        return HttpResponseRedirect(reverse("admin:{}_{}_change".format(*info), args=[object_id]))


def _config_link(label: str, *, rule_id: int | None, cap_id: int | None) -> str:
    """The rule's or cap's change page, named `label` (plain text for neither)."""
    if rule_id:
        return format_html(
            '<a href="{}">{}</a>', reverse("admin:surface_app_businessrule_change", args=[rule_id]), label
        )
    if cap_id:
        return format_html(
            '<a href="{}">{}</a>', reverse("admin:surface_app_frequencycap_change", args=[cap_id]), label
        )
    return label


@admin.register(Placement)
class PlacementAdmin(_ServiceAdmin):
    form = _PlacementForm
    save_service = configuration.placement_save
    delete_service = configuration.placement_delete
    argument = "placement"
    list_display = ["name", "title", "context", "size", "scorer", "deadline_ms", "enabled"]
    list_filter = ["context", "scorer", "enabled"]
    search_fields = ["name", "title"]
    readonly_fields = ["rules_in_order", "rule_conflicts"]
    fieldsets = [
        (None, {"fields": ["name", "title", "context", "size", "enabled", "requires_review"]}),
        ("Model", {"fields": ["sources", "scorer", "deadline_ms"]}),
        ("Shelf", {"fields": ["max_per_category", "max_per_brand", "exclude_purchased"]}),
        ("Fallbacks", {"fields": ["fallbacks", "default_items"]}),
        ("Rules and caps that touch this placement, in the order they apply", {"fields": ["rules_in_order"]}),
    ]
    conflicts_fieldset = ("Rules and caps that defeat each other", {"fields": ["rule_conflicts"]})

    def get_fieldsets(self, request: HttpRequest, obj: Placement | None = None) -> list[Any]:
        """A saved placement's conflicts come first: what the merchandiser must not have to discover."""
        fieldsets = list(super().get_fieldsets(request, obj))
        return [self.conflicts_fieldset, *fieldsets] if obj is not None and obj.pk else fieldsets

    @staticmethod
    def _conflicts(obj: Placement) -> list[Conflict]:
        """Found once per page (the warnings and the rules table share them)."""
        if not hasattr(obj, "_rule_conflicts"):
            obj._rule_conflicts = placement_conflicts(placement=obj)  # type: ignore[attr-defined]
        return obj._rule_conflicts  # type: ignore[attr-defined]

    @admin.display(description="Conflicts")
    def rule_conflicts(self, obj: Placement) -> str:
        if obj.pk is None:
            return ""
        conflicts = self._conflicts(obj)
        if not conflicts:
            return format_html('<p id="rule-conflicts-none">{}</p>', "None: every rule and cap does what it says.")

        def link(ref: RuleRef) -> str:
            return _config_link(ref.label, rule_id=ref.rule_id, cap_id=ref.cap_id)

        items = format_html_join(
            "",
            '<li class="warning rule-conflict" data-kind="{}">{} <span class="rule-conflict-rules">({})</span></li>',
            [
                (
                    conflict.kind,
                    conflict.message,
                    format_html_join(", ", "{}", [(link(ref),) for ref in conflict.rules]),
                )
                for conflict in conflicts
            ],
        )
        return format_html('<ul id="rule-conflicts" class="messagelist">{}</ul>', items)

    @admin.display(description="In order")
    def rules_in_order(self, obj: Placement) -> str:
        if obj.pk is None:
            return "Save the placement to see the rules that apply to it."
        rows = placement_rules_in_order(placement=obj, conflicts=self._conflicts(obj))
        if not rows:
            return "No rules or caps apply to this placement."

        def link(row: Any) -> str:
            return _config_link(row.name, rule_id=row.rule_id, cap_id=row.cap_id)

        header = format_html_join(
            "", "<th>{}</th>", [(h,) for h in ("Step", "Kind", "Rule", "Applies to", "Priority", "Valid", "Audience",
                                               "State")]
        )  # fmt: skip
        body = format_html_join(
            "",
            "<tr class='rule-row'><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
            "<td class='rule-state{}'>{}</td></tr>",
            [
                (row.step, row.kind, link(row), row.scope, "" if row.priority is None else row.priority, row.validity,
                 row.audience, " rule-defeated" if row.defeated else "", row.state)
                for row in rows
            ],
        )  # fmt: skip
        return format_html(
            '<table id="rules-in-order"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>', header, body
        )


class _RuleAdminMixin:
    """Saves as the request's user (drafts of placements that require review are theirs) and approves drafts."""

    readonly_fields = ["status", "drafted_by", "published_by"]
    actions = ["approve_and_publish"]

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        obj._history_user = request.user
        configuration.rule_save(rule=obj, user=request.user)
        if obj.status == BusinessRule.Status.DRAFT:
            self.message_user(  # type: ignore[attr-defined]
                request, f"'{obj.name}' is a draft: it serves once another user approves it.", messages.WARNING
            )

    def has_publish_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("surface_app.publish_rule")

    @admin.action(permissions=["publish"], description="Approve and publish the selected drafts")
    def approve_and_publish(self, request: HttpRequest, queryset: QuerySet) -> None:
        for rule in queryset:
            try:
                configuration.rule_publish(rule=rule, user=request.user)
            except ValidationError as error:
                self.message_user(request, "; ".join(error.messages), messages.ERROR)  # type: ignore[attr-defined]
            else:
                self.message_user(request, f"'{rule.name}' is published.", messages.SUCCESS)  # type: ignore[attr-defined]


@admin.register(BusinessRule)
class BusinessRuleAdmin(_RuleAdminMixin, ImportExportMixin, _ServiceAdmin):
    form = _RuleForm
    resource_classes = [BusinessRuleResource]
    import_formats = export_formats = [CSV]
    save_service = configuration.rule_save
    delete_service = configuration.rule_delete
    argument = "rule"
    list_display = ["name", "kind", "placement", "priority", "valid_from", "valid_until", "enabled", "status"]
    list_filter = ["kind", "placement", "enabled", "status"]
    search_fields = ["name", "campaign"]


@admin.register(PinRule)
class PinRuleAdmin(_RuleAdminMixin, _ServiceAdmin):
    form = _PinForm
    save_service = configuration.rule_save
    delete_service = configuration.rule_delete
    argument = "rule"
    list_display = ["name", "campaign", "placement", "slot", "pinned_item", "priority", "valid_from", "valid_until",
                    "enabled", "status"]  # fmt: skip
    list_filter = ["campaign", "placement", "enabled", "status"]
    search_fields = ["name", "campaign", "item_ids"]

    @admin.display(description="item")
    def pinned_item(self, obj: PinRule) -> str:
        return ", ".join(str(item_id) for item_id in obj.item_ids or [])

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).filter(kind=BusinessRule.Kind.PIN)

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        obj.kind = BusinessRule.Kind.PIN
        super().save_model(request, obj, form, change)


@admin.register(FrequencyCap)
class FrequencyCapAdmin(_ServiceAdmin):
    form = _CapForm
    save_service = configuration.cap_save
    delete_service = configuration.cap_delete
    argument = "cap"
    list_display = ["name", "scope", "placement", "max_impressions", "window_seconds", "enabled"]
    list_filter = ["scope", "placement", "enabled"]


class _FallbackListForm(_PlacementForm):
    class Meta:
        model = FallbackList
        fields = ["fallbacks", "default_items"]


@admin.register(FallbackList)
class FallbackListAdmin(ImportExportMixin, _ServiceAdmin):
    """Each placement's fallback chain and default list, on their own page (placements are added under
    Placements)."""

    form = _FallbackListForm
    resource_classes = [FallbackListResource]
    import_formats = export_formats = [CSV]
    save_service = configuration.placement_save
    delete_service = configuration.placement_delete
    argument = "placement"
    list_display = ["name", "chain", "default_count"]
    fields = ["name", "fallbacks", "default_items"]
    readonly_fields = ["name"]

    @admin.display(description="fallback chain")
    def chain(self, obj: Placement) -> str:
        return " → ".join(FALLBACK_LABELS.get(step, step) for step in obj.fallbacks or []) or "-"

    @admin.display(description="default items")
    def default_count(self, obj: Placement) -> int:
        return len(obj.default_items or [])

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
