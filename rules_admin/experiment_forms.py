"""The console's experiment form: the experiment's fields, then one row per variant (2 to 5: empty rows are left
out) with its weight and treatment. The forms only shape what was typed; `surface_app`'s services validate it and
name the refused field, which `errors_place` puts back on the field it belongs to."""

from __future__ import annotations

from typing import Any, cast

from django import forms

from surface_app.interface import VARIANTS_MAX, WEIGHT_MAX, Experiment
from surface_app.models import FALLBACKS, RETRIEVAL_SOURCES

TREATMENT_LABELS = {
    "current": "Current: what the placement serves today",
    "popularity": "Popularity: no personalization (a holdout)",
    "model": "Model: a registered model version",
    "sources": "Sources: another retrieval-source mix",
    "rules": "Rules: another rule set or fallback list",
}
# The holdout that proves personalization pays: most shoppers keep what is served today, a tenth get popularity.
HOLDOUT_PRESET: dict[str, Any] = {
    "name": "Personalization holdout",
    "primary_metric": Experiment.Metric.RPM,
    "variants": [
        {"name": "personalized", "weight": 90, "kind": "current"},
        {"name": "holdout", "weight": 10, "kind": "popularity"},
    ],
}
# The service's names of the guardrails, and the form fields that show them.
GUARDRAIL_FIELDS = {
    "guardrails.serving_p99_ms": "guardrail_p99_ms",
    "guardrails.degraded_rate": "guardrail_degraded_rate",
}


class ExperimentForm(forms.Form):
    name = forms.CharField(max_length=200)
    placement = forms.ChoiceField(choices=())
    primary_metric = forms.ChoiceField(choices=Experiment.Metric.choices, initial=Experiment.Metric.CTR)
    guardrail_p99_ms = forms.FloatField(required=False, label="Serving p99 limit (ms)", help_text="Empty: no limit.")
    guardrail_degraded_rate = forms.FloatField(
        required=False, label="Degraded share limit", help_text="From 0 to 1, e.g. 0.05; empty: no limit."
    )

    def __init__(self, *args: Any, placements: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["placement"]).choices = [(name, name) for name in placements]


class VariantForm(forms.Form):
    name = forms.CharField(required=False, max_length=50)
    weight = forms.IntegerField(required=False, min_value=1, max_value=WEIGHT_MAX)
    kind = forms.ChoiceField(required=False, label="Treatment", choices=[("", "---------"), *TREATMENT_LABELS.items()])
    version = forms.CharField(required=False, max_length=60, label="Model version", help_text="Model only.")
    sources = forms.MultipleChoiceField(
        required=False,
        choices=[(source, source) for source in RETRIEVAL_SOURCES],
        widget=forms.CheckboxSelectMultiple,
        help_text="Sources only.",
    )
    rule_set = forms.CharField(required=False, max_length=200, label="Rule set", help_text="Rules only.")
    fallback = forms.ChoiceField(
        required=False, choices=[("", "---------"), *((name, name) for name in FALLBACKS)], help_text="Rules only."
    )

    def is_empty(self) -> bool:
        data = self.cleaned_data
        return not (data.get("name") or data.get("weight") or data.get("kind"))

    def variant(self) -> dict[str, Any]:
        """The variant as the service takes it: the treatment with only its kind's fields."""
        data = self.cleaned_data
        kind = data.get("kind") or ""
        treatment: dict[str, Any] = {"kind": kind}
        if kind == "model":
            treatment["version"] = data.get("version") or ""
        elif kind == "sources":
            treatment["sources"] = list(data.get("sources") or [])
        elif kind == "rules":
            treatment.update({key: data[key] for key in ("rule_set", "fallback") if data.get(key)})
        return {"name": data.get("name") or "", "weight": data.get("weight"), "treatment": treatment}


def variant_forms(data: Any = None, *, initial: list[dict[str, Any]] | None = None) -> list[VariantForm]:
    """VARIANTS_MAX rows, prefixed v0 to v4; `initial` fills the first ones."""
    rows = list(initial or [])
    return [
        VariantForm(data, prefix=f"v{index}", initial=rows[index] if index < len(rows) else None)
        for index in range(VARIANTS_MAX)
    ]


def errors_place(
    errors: dict[str, list[str]], *, form: ExperimentForm, variants: list[VariantForm], used: list[int]
) -> list[str]:
    """Put each message of the service on its field: `name`, `guardrails.degraded_rate`, `variants.1.weight`,
    `variants.0.treatment.version` (the index counts the rows sent, `used` maps it back to the form's row). What
    belongs to no field (`variants` as a whole) is returned for the page to show above the rows."""
    general = []
    for key, messages in errors.items():
        parts = key.split(".")
        if key in form.fields:
            form.add_error(key, messages)
        elif key in GUARDRAIL_FIELDS:
            form.add_error(GUARDRAIL_FIELDS[key], messages)
        elif parts[0] == "variants" and len(parts) > 2 and parts[1].isdigit() and int(parts[1]) < len(used):
            row = variants[used[int(parts[1])]]
            field = parts[-1] if parts[-1] in row.fields and parts[-1] != "treatment" else "kind"
            row.add_error(field, messages)
        else:
            general.extend(messages)
    return general
