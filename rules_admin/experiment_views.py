"""The console's experiments (/admin/console/experiments/): the list, a create form with a one-click holdout
preset, and each experiment's page (per-variant table, lifts with their intervals, a daily chart, the sample-ratio
and guardrail warnings, the verdict) with its start and stop buttons. Thin: writes go through Surface's services,
which validate and name the field; reads through `experiment_results_compute`."""

from __future__ import annotations

import logging
import math
from datetime import timedelta
from typing import Any

from django.contrib import admin, messages
from django.contrib.auth.decorators import permission_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from personalization.errors import ApplicationError
from rules_admin import dashboard_charts as charts
from rules_admin.experiment_forms import (
    HOLDOUT_PRESET,
    TREATMENT_LABELS,
    ExperimentForm,
    VariantForm,
    errors_place,
    variant_forms,
)
from surface_app.interface import (
    Experiment,
    ExperimentResults,
    experiment_create,
    experiment_get,
    experiment_results_compute,
    experiment_start,
    experiment_stop,
    experiments_list,
    placement_names,
)

logger = logging.getLogger(__name__)

VIEW_PERMISSION = "surface_app.view_experiment"
ADD_PERMISSION = "surface_app.add_experiment"
CHANGE_PERMISSION = "surface_app.change_experiment"
NO_VALUE = "n/a"
METRIC_FORMATS: dict[str, charts.Format] = {
    "ctr": charts.format_percent,
    "add_to_cart_rate": charts.format_percent,
    "conversion_rate": charts.format_percent,
    "rpm": charts.format_money,
}
# Each metric's numerator in the daily series (the denominator is impressions) and its scale.
DAILY_NUMERATORS = {"ctr": ("clicks", 1), "add_to_cart_rate": ("add_to_carts", 1),
                    "conversion_rate": ("purchases", 1), "rpm": ("revenue", 1000)}  # fmt: skip


def _context(request: HttpRequest, title: str, **extra: Any) -> dict[str, Any]:
    return {**admin.site.each_context(request), "title": title, **extra}


@require_http_methods(["GET"])
@permission_required(VIEW_PERMISSION, raise_exception=True)
def experiment_list(request: HttpRequest) -> HttpResponse:
    rows = [
        (experiment, ", ".join(f"{variant['name']} ({variant['weight']})" for variant in experiment.variants))
        for experiment in experiments_list()
    ]
    context = _context(request, "Experiments", rows=rows, can_add=request.user.has_perm(ADD_PERMISSION))
    return TemplateResponse(request, "rules_admin/experiment_list.html", context)


def _initial(request: HttpRequest) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    if request.GET.get("preset") == "holdout":
        return {key: value for key, value in HOLDOUT_PRESET.items() if key != "variants"}, HOLDOUT_PRESET["variants"]
    return {}, [{"name": "control", "weight": 1, "kind": "current"}, {"name": "treatment", "weight": 1}]


@require_http_methods(["GET", "POST"])
@permission_required(ADD_PERMISSION, raise_exception=True)
def experiment_new(request: HttpRequest) -> HttpResponse:
    """GET: the empty form (`?preset=holdout`: the holdout filled in). POST: create it, started ("start") or as a
    draft ("draft"), then its page; or the form again with each refusal on its field."""
    placements = sorted(placement_names())
    general: list[str] = []
    if request.method == "POST":
        form = ExperimentForm(request.POST, placements=placements)
        variants = variant_forms(request.POST)
        created = _create(request, form, variants, general)
        if created is not None:
            return HttpResponseRedirect(reverse("console:experiment", args=[created.pk]))
    else:
        initial, rows = _initial(request)
        form = ExperimentForm(initial=initial, placements=placements)
        variants = variant_forms(initial=rows)
    context = _context(request, "New experiment", form=form, variants=variants, general_errors=general,
                       placements=placements)  # fmt: skip
    return TemplateResponse(request, "rules_admin/experiment_form.html", context)


def _create(
    request: HttpRequest, form: ExperimentForm, variants: list[VariantForm], general: list[str]
) -> Experiment | None:
    """The experiment created from the forms, or None with every refusal placed on its field (`general`: the
    rest)."""
    rows_valid = [row.is_valid() for row in variants]  # every row, so that each shows its errors
    if not (form.is_valid() and all(rows_valid)):
        return None
    used = [index for index, row in enumerate(variants) if not row.is_empty()]
    data = form.cleaned_data
    start = request.POST.get("action") != "draft"
    try:
        experiment = experiment_create(
            name=data["name"],
            placement=data["placement"],
            primary_metric=data["primary_metric"],
            variants=[variants[index].variant() for index in used],
            guardrails={"serving_p99_ms": data["guardrail_p99_ms"], "degraded_rate": data["guardrail_degraded_rate"]},
            start=start,
        )
    except ApplicationError as error:
        general.extend(errors_place(error.errors or {"": [error.message]}, form=form, variants=variants, used=used))
        return None
    logger.info("console.experiment_created", extra={"experiment_id": experiment.pk, "started": start,
                                                     "user": request.user.get_username()})  # fmt: skip
    messages.success(request, f"“{experiment.name}” {'is running' if start else 'is saved as a draft'}.")
    return experiment


def _experiment(experiment_id: int) -> Experiment:
    experiment = experiment_get(experiment_id=experiment_id)
    if experiment is None:
        raise Http404("No such experiment.")
    return experiment


def _number(value: float | None, fmt: charts.Format) -> str:
    return NO_VALUE if value is None or not math.isfinite(value) else fmt(value)


def _interval(low: float, high: float, fmt: charts.Format) -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return NO_VALUE
    return f"{fmt(low)} to {fmt(high)}"


def _signed_percent(value: float) -> str:
    return f"{value * 100:+.1f}%"


def _variant_rows(results: ExperimentResults) -> list[dict[str, Any]]:
    total_weight = sum(variant.weight for variant in results.variants)
    rows = []
    for variant in results.variants:
        cells: dict[str, Any] = {
            "name": variant.name,
            "treatment": TREATMENT_LABELS.get(variant.treatment.get("kind", ""), variant.treatment.get("kind")),
            "treatment_detail": {key: value for key, value in variant.treatment.items() if key != "kind"},
            "share": f"{variant.weight / total_weight * 100:.0f}%",
            "shoppers": f"{variant.shoppers:,}",
            "impressions": f"{variant.impressions:,}",
            "clicks": f"{variant.clicks:,}",
            "add_to_carts": f"{variant.add_to_carts:,}",
            "purchases": f"{variant.purchases:,}",
            "revenue": charts.format_money(variant.revenue),
            "p99": _number(variant.p99_serving_ms, lambda ms: f"{ms:,.1f} ms"),
            "degraded": _number(variant.degraded_rate, charts.format_percent),
        }
        for metric, fmt in METRIC_FORMATS.items():
            rate = variant.rates[metric]
            cells[metric] = _number(rate.value, fmt)
            cells[f"{metric}_interval"] = _interval(rate.low, rate.high, fmt)
        rows.append(cells)
    return rows


def _lift_rows(results: ExperimentResults) -> list[dict[str, Any]]:
    labels = dict(Experiment.Metric.choices)
    return [
        {
            "variant": lift.variant,
            "metric": labels[lift.metric],
            "primary": lift.metric == results.experiment.primary_metric,
            "lift": _number(lift.plain.lift, _signed_percent),
            "plain": _interval(lift.plain.low, lift.plain.high, _signed_percent),
            "p_value": _number(lift.plain.p_value, lambda p: f"{p:.3g}"),
            "cuped": _interval(lift.cuped.low, lift.cuped.high, _signed_percent) if lift.cuped else NO_VALUE,
            "variance_reduction": _number(lift.cuped_variance_reduction, charts.format_percent),
            "sequential": _interval(lift.sequential.low, lift.sequential.high, _signed_percent),
            "sequential_p_value": _number(lift.sequential.p_value, lambda p: f"{p:.3g}"),
        }
        for lift in results.lifts
    ]


def _daily_charts(results: ExperimentResults) -> list[charts.LineChart]:
    if not results.daily:
        return []
    first, last = min(point.day for point in results.daily), max(point.day for point in results.daily)
    days = [first + timedelta(days=offset) for offset in range((last - first).days + 1)]
    found = {(point.variant, point.day): point for point in results.daily}
    names = [variant.name for variant in results.variants]
    primary = results.experiment.primary_metric
    numerator, scale = DAILY_NUMERATORS[primary]

    def rate(variant: str, day: Any) -> float | None:
        point = found.get((variant, day))
        return getattr(point, numerator) / point.impressions * scale if point and point.impressions else None

    def impressions(variant: str, day: Any) -> float | None:
        point = found.get((variant, day))
        return float(point.impressions) if point else 0.0

    return [
        charts.line_chart(key=primary, title=dict(Experiment.Metric.choices)[primary], days=days,
                          series={name: [rate(name, day) for day in days] for name in names},
                          fmt=METRIC_FORMATS[primary]),
        charts.line_chart(key="impressions", title="Impressions", days=days,
                          series={name: [impressions(name, day) for day in days] for name in names},
                          fmt=charts.format_count),
    ]  # fmt: skip


def _verdict_kind(verdict: str) -> str:
    if verdict == "stop: SRM":
        return "srm"
    if verdict.startswith("guardrail"):
        return "guardrail"
    return "winner" if verdict.startswith("winner") else "waiting"


@require_http_methods(["GET"])
@permission_required(VIEW_PERMISSION, raise_exception=True)
def experiment_detail(request: HttpRequest, experiment_id: int) -> HttpResponse:
    experiment = _experiment(experiment_id)
    results = experiment_results_compute(experiment=experiment)
    can_change = request.user.has_perm(CHANGE_PERMISSION)
    context = _context(
        request,
        f"Experiment: {experiment.name}",
        experiment=experiment,
        results=results,
        variant_rows=_variant_rows(results),
        lift_rows=_lift_rows(results),
        daily_charts=_daily_charts(results),
        verdict_kind=_verdict_kind(results.verdict),
        primary_label=dict(Experiment.Metric.choices)[experiment.primary_metric],
        can_start=can_change and experiment.status == Experiment.Status.DRAFT,
        can_stop=can_change and experiment.status != Experiment.Status.STOPPED,
    )
    return TemplateResponse(request, "rules_admin/experiment_detail.html", context)


def _act(request: HttpRequest, experiment_id: int, action: str) -> HttpResponse:
    """Start or stop, then back to the experiment's page with what happened (a refusal: its reason)."""
    experiment = _experiment(experiment_id)
    try:
        if action == "start":
            experiment = experiment_start(experiment_id=experiment.pk)
        else:
            experiment = experiment_stop(experiment_id=experiment.pk)
    except ApplicationError as error:
        messages.error(request, error.message)
    else:
        logger.info(f"console.experiment_{action}", extra={"experiment_id": experiment.pk,
                                                           "user": request.user.get_username()})  # fmt: skip
        messages.success(request, f"“{experiment.name}” is {experiment.get_status_display().lower()}.")
    return HttpResponseRedirect(reverse("console:experiment", args=[experiment_id]))


@require_POST
@permission_required(CHANGE_PERMISSION, raise_exception=True)
def experiment_start_view(request: HttpRequest, experiment_id: int) -> HttpResponse:
    return _act(request, experiment_id, "start")


@require_POST
@permission_required(CHANGE_PERMISSION, raise_exception=True)
def experiment_stop_view(request: HttpRequest, experiment_id: int) -> HttpResponse:
    return _act(request, experiment_id, "stop")
