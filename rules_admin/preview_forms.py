"""The preview page's forms: who and where to preview, and an unsaved rule edit (validated, never saved here)."""

from __future__ import annotations

import copy
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.http import QueryDict

from rules_admin.condition_widget import ConditionBuilderWidget
from surface_app.interface import items_unknown, rule_validate
from surface_app.models import BusinessRule, Placement

MAX_RECENT_ITEMS = 20
RULE_PREFIX = "rule"
RULE_FIELDS = (
    "name", "kind", "placement", "priority", "enabled", "valid_from", "valid_until", "condition", "audience", "factor",
    "item_ids", "slot", "campaign", "caps_apply",
)  # fmt: skip


def _item_ids(raw: str) -> list[str]:
    """Comma-separated item ids, in order, without blanks or repeats."""
    return list(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))


class _JSONField(forms.JSONField):
    def prepare_value(self, value: Any) -> Any:
        return "" if value is None else super().prepare_value(value)  # an empty box, not "null"


class PreviewForm(forms.Form):
    """Whose slate, where: a user id, or a made-up profile (traits and a few recent items)."""

    placement = forms.ChoiceField()
    user_id = forms.CharField(
        required=False, max_length=200, label="User id", help_text="Empty: a made-up profile (traits, recent items)."
    )
    traits = _JSONField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2, "cols": 40, "placeholder": '{"age": 16}'}),
        help_text="A JSON object; for a user id it replaces their stored traits.",
    )
    recent_items = forms.CharField(
        required=False,
        label="Recent items",
        widget=forms.TextInput(attrs={"size": 30, "placeholder": "sku-1, sku-2"}),
        help_text="Comma-separated item ids the profile just viewed (for a user: the page's context items).",
    )
    k = forms.IntegerField(
        required=False, min_value=1, max_value=100, label="Slots", help_text="Empty: the placement's size."
    )
    rule = forms.ModelChoiceField(
        queryset=BusinessRule.objects.select_related("placement"),
        required=False,
        empty_label="— a new rule —",
        label="Edit rule",
        help_text="Pick a saved rule to load it into the editor, or write a new one.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        names = list(Placement.objects.order_by("name").values_list("name", flat=True))
        self.fields["placement"].choices = [(name, name) for name in names]

    def clean_traits(self) -> dict[str, Any] | None:
        traits = self.cleaned_data.get("traits")
        if traits in (None, ""):
            return None
        if not isinstance(traits, dict):
            raise ValidationError('Traits are a JSON object, e.g. {"age": 16}.')
        return traits

    def clean_recent_items(self) -> list[str]:
        items = _item_ids(self.cleaned_data.get("recent_items") or "")
        if len(items) > MAX_RECENT_ITEMS:
            raise ValidationError(f"At most {MAX_RECENT_ITEMS} recent items.")
        return items


class RuleEditForm(forms.ModelForm):
    """A business rule as the merchandiser would change it; `rule_edit()` gives the unsaved rule to preview."""

    item_ids = forms.CharField(
        required=False,
        label="Item ids",
        widget=forms.TextInput(attrs={"size": 30}),
        help_text="Comma-separated. Pin: the item; block: the items.",
    )

    class Meta:
        model = BusinessRule
        fields = list(RULE_FIELDS)
        widgets = {
            "valid_from": forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
            "valid_until": forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
            # The rule form's rows over the JSON box (the page includes the form's media).
            "condition": ConditionBuilderWidget(attrs={"rows": 2, "cols": 40}),
            "audience": ConditionBuilderWidget(attrs={"rows": 2, "cols": 40}, mode="audience"),
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("prefix", RULE_PREFIX)
        super().__init__(*args, **kwargs)
        self.fields["kind"].choices = [("", "— no rule edit —"), *BusinessRule.Kind.choices]
        self.fields["placement"].empty_label = "Every placement"
        self.fields["condition"].help_text = (
            '{"field": "category", "op": "eq", "value": "mugs"}, or a list of them (all must hold). Fields: category, '
            "price, brand, title, in_stock, attributes.<name>; ops: eq, ne, in, lt, lte, gt, gte, contains."
        )
        self.fields["audience"].help_text = 'Conditions on user traits, e.g. {"field": "traits.age", "op": "lt", ...}.'
        if self.instance.pk or self.instance.item_ids:
            self.initial["item_ids"] = ", ".join(self.instance.item_ids or [])

    def clean_item_ids(self) -> list[str]:
        item_ids = _item_ids(self.cleaned_data.get("item_ids") or "")
        unknown = items_unknown(item_ids=item_ids)
        if unknown:
            raise ValidationError(f"Not in the catalog: {', '.join(unknown)}.")
        return item_ids

    def clean_condition(self) -> Any:
        return self.cleaned_data.get("condition") or {}

    def clean_audience(self) -> Any:
        return self.cleaned_data.get("audience") or {}

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if self.errors:  # field errors first: the rule's own checks need every field parsed
            return cleaned
        # The rule as it would be saved, with its id: a saved pin is not in conflict with itself.
        candidate = copy.copy(self.instance)
        for name in RULE_FIELDS:
            setattr(candidate, name, cleaned.get(name))
        try:
            rule_validate(rule=candidate)
        except ValidationError as error:
            for field_name, messages in error.message_dict.items():
                self.add_error(field_name if field_name in self.fields else None, messages)
        return cleaned

    def rule_edit(self) -> BusinessRule:
        """The edited rule, not saved (an edit of a saved rule keeps its pk: the preview replaces that rule)."""
        return self.save(commit=False)


def preview_rule_form(data: QueryDict | None, *, rule: BusinessRule | None) -> tuple[RuleEditForm, bool]:
    """The rule editor for a request, and whether it holds an edit to preview.

    Without submitted rule fields, or when the merchandiser asks to load `rule`, the editor is prefilled with that
    saved rule (or is empty for a new one); with a kind chosen, the submitted fields are the edit.
    """
    instance = rule if rule is not None else BusinessRule()
    loading = data is None or data.get("action") == "load" or f"{RULE_PREFIX}-kind" not in data
    if loading:
        return RuleEditForm(instance=instance), False
    form = RuleEditForm(data, instance=instance)
    return form, bool(data.get(f"{RULE_PREFIX}-kind"))
