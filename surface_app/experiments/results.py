"""An experiment's results: what its variants' shoppers saw and did (`graph_app.state.interface.experiment_outcomes`,
aggregated in PostgreSQL) judged by `surface_app.experiments.statistics`: per-variant totals and rates with
shopper-clustered 95% intervals, each treatment's lift over the first variant (plain, CUPED-adjusted and the
always-valid sequential interval), the sample-ratio check, guardrail breaches and the verdict."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
from rest_framework import status

from graph_app.state.interface import PRE_EXPOSURE_DAYS, ExperimentVariantOutcomes, experiment_outcomes
from personalization.errors import ApplicationError
from surface_app.experiments import statistics as stats
from surface_app.experiments.models import Experiment
from surface_app.experiments.selectors import experiment_get

# The experiment's metric names (the model's and the API's) and the statistics' own.
METRICS: dict[str, stats.Metric] = {
    Experiment.Metric.CTR: stats.Metric.CTR,
    Experiment.Metric.ADD_TO_CART_RATE: stats.Metric.ADD_TO_CART_RATE,
    Experiment.Metric.CONVERSION_RATE: stats.Metric.CONVERSION,
    Experiment.Metric.RPM: stats.Metric.RPM,
}
METRIC_LABELS = dict(Experiment.Metric.choices)
CONFIDENCE = stats.DEFAULT_CONFIDENCE


@dataclass(frozen=True)
class VariantResult:
    name: str
    weight: int
    treatment: dict[str, Any]
    shoppers: int
    impressions: int
    clicks: int
    add_to_carts: int
    purchases: int
    revenue: float
    rates: dict[str, stats.RatioEstimate]  # by the experiment's metric name
    slates: int
    p99_serving_ms: float | None
    degraded_rate: float | None


@dataclass(frozen=True)
class LiftResult:
    """One treatment's lift over the first variant on one metric: the fixed-horizon interval, the same after CUPED
    (None when the shoppers had no pre-exposure activity to adjust with) and the always-valid one."""

    variant: str
    metric: str
    plain: stats.LiftEstimate
    cuped: stats.LiftEstimate | None
    cuped_variance_reduction: float | None
    sequential: stats.SequentialLift


@dataclass(frozen=True)
class DailyPoint:
    variant: str
    day: date
    impressions: int
    clicks: int
    add_to_carts: int
    purchases: int
    revenue: float


@dataclass(frozen=True)
class ExperimentResults:
    experiment: Experiment
    variants: list[VariantResult]
    lifts: list[LiftResult]  # every treatment on every metric, the primary metric first
    sample_ratio: stats.SampleRatioCheck | None  # None before any shopper was served
    guardrail_breaches: list[stats.GuardrailBreach]
    daily: list[DailyPoint]
    verdict: str  # statistics.experiment_verdict's line: "winner: <variant>", "no difference yet", "stop: SRM", ...
    summary: str  # the same in a sentence for a merchandiser
    pre_exposure_days: int = PRE_EXPOSURE_DAYS

    @property
    def primary_lifts(self) -> list[LiftResult]:
        return [lift for lift in self.lifts if lift.metric == self.experiment.primary_metric]


def _empty(variant: str) -> ExperimentVariantOutcomes:
    return ExperimentVariantOutcomes(variant, [], [], [], [], [], [], [], [], [], [], 0, None, 0.0)


def _shoppers(outcomes: ExperimentVariantOutcomes) -> stats.VariantShoppers:
    return stats.VariantShoppers(
        variant=outcomes.variant,
        impressions=np.asarray(outcomes.impressions, dtype=float),
        clicks=np.asarray(outcomes.clicks, dtype=float),
        add_to_carts=np.asarray(outcomes.add_to_carts, dtype=float),
        purchases=np.asarray(outcomes.purchases, dtype=float),
        revenue=np.asarray(outcomes.revenue, dtype=float),
        pre_exposure={
            stats.Metric.CTR: np.asarray(outcomes.pre_clicks, dtype=float),
            stats.Metric.ADD_TO_CART_RATE: np.asarray(outcomes.pre_add_to_carts, dtype=float),
            stats.Metric.CONVERSION: np.asarray(outcomes.pre_purchases, dtype=float),
            stats.Metric.RPM: np.asarray(outcomes.pre_revenue, dtype=float),
        },
    )


def _variant_result(
    config: dict[str, Any], outcomes: ExperimentVariantOutcomes, shoppers: stats.VariantShoppers
) -> VariantResult:
    summary = stats.variant_summarize(shoppers=shoppers, confidence=CONFIDENCE)
    return VariantResult(
        name=config["name"],
        weight=config["weight"],
        treatment=config["treatment"],
        shoppers=summary.shoppers,
        impressions=int(summary.impressions),
        clicks=int(summary.clicks),
        add_to_carts=int(summary.add_to_carts),
        purchases=int(summary.purchases),
        revenue=summary.revenue,
        rates={name: summary.estimate(metric) for name, metric in METRICS.items()},
        slates=outcomes.slates,
        p99_serving_ms=outcomes.p99_serving_ms,
        degraded_rate=outcomes.degraded_rate if outcomes.slates else None,
    )


def _cuped_usable(variants: Sequence[stats.VariantShoppers], metric: stats.Metric) -> bool:
    """CUPED needs, in every variant, two shoppers with impressions whose metric varies (else there is no variance
    to reduce), and a covariate that varies."""
    for shoppers in variants:
        y, d = shoppers.numerators(metric), shoppers.impressions
        if len(d) < 2 or d.sum() <= 0 or not np.var(y - y.sum() / d.sum() * d) > 0:
            return False
    return bool(np.concatenate([shoppers.pre_exposure[metric] for shoppers in variants]).var() > 0)


def _lifts(variants: Sequence[stats.VariantShoppers], metric_name: str) -> list[LiftResult]:
    metric = METRICS[metric_name]
    summaries = [stats.variant_summarize(shoppers=shoppers, confidence=CONFIDENCE) for shoppers in variants]
    cuped = stats.cuped_adjust(variants=variants, metric=metric) if _cuped_usable(variants, metric) else None
    # Several treatments share the false-winner budget (Bonferroni), as `sequential_lift` asks.
    sequential_confidence = 1 - (1 - CONFIDENCE) / max(1, len(variants) - 1)
    results = []
    for index, summary in enumerate(summaries[1:], start=1):
        plain = stats.lift_estimate(
            variant=summary.variant, control=summaries[0].estimate(metric), treatment=summary.estimate(metric)
        )
        adjusted = None
        if cuped is not None:
            adjusted = stats.lift_estimate(
                variant=summary.variant, control=cuped[0].adjusted, treatment=cuped[index].adjusted
            )
        results.append(
            LiftResult(
                variant=summary.variant,
                metric=metric_name,
                plain=plain,
                cuped=adjusted,
                cuped_variance_reduction=cuped[index].variance_reduction if cuped is not None else None,
                sequential=stats.sequential_lift(lift=plain, confidence=sequential_confidence),
            )
        )
    return results


def _guardrail_breaches(experiment: Experiment, variants: Sequence[VariantResult]) -> list[stats.GuardrailBreach]:
    limits = stats.GuardrailLimits(
        p99_ms_max=experiment.guardrail_p99_ms if experiment.guardrail_p99_ms is not None else math.inf,
        degraded_rate_max=(
            experiment.guardrail_degraded_rate if experiment.guardrail_degraded_rate is not None else math.inf
        ),
    )
    observations = [
        stats.GuardrailObservation(
            variant=variant.name,
            p99_ms=variant.p99_serving_ms if variant.p99_serving_ms is not None else math.nan,
            degraded_rate=variant.degraded_rate if variant.degraded_rate is not None else math.nan,
        )
        for variant in variants
        if variant.slates
    ]
    return list(stats.guardrails_check(observations=observations, limits=limits))


def _percent(value: float) -> str:
    return f"{value * 100:+.1f}%"


def _summary(experiment: Experiment, verdict: str, lifts: Sequence[LiftResult], control: str) -> str:
    """The verdict in a sentence: what to do, and the always-valid interval behind it."""
    metric = METRIC_LABELS[experiment.primary_metric].lower()
    if verdict == "stop: SRM":
        return (
            "Stop: the variants' shares of shoppers do not match their weights (sample-ratio mismatch), so "
            "assignment or logging is broken and no result of this experiment can be trusted."
        )
    if verdict.startswith("guardrail breached: "):
        return f"Stop: a guardrail is breached ({verdict.removeprefix('guardrail breached: ')})."
    if verdict.startswith("winner: "):
        winner = verdict.removeprefix("winner: ")
        if winner == control:
            return f"{control} wins on {metric}: every other variant does worse, with an always-valid 95% interval."
        lift = next(lift.sequential for lift in lifts if lift.variant == winner)
        return (
            f"{winner} wins on {metric}: {_percent(lift.lift)} over {control} "
            f"(always-valid 95% interval {_percent(lift.low)} to {_percent(lift.high)})."
        )
    return (
        f"No difference yet on {metric}: every always-valid 95% interval of the lift over {control} still "
        "includes zero. Keep it running; looking every day does not make a false winner more likely."
    )


def _daily(outcomes: Sequence[ExperimentVariantOutcomes]) -> list[DailyPoint]:
    return [
        DailyPoint(row.variant, day.day, day.impressions, day.clicks, day.add_to_carts, day.purchases, day.revenue)
        for row in outcomes
        for day in row.days
    ]


def experiment_results_compute(*, experiment: Experiment) -> ExperimentResults:
    """The results of the experiment from its logs (nothing served yet: zeros and "no difference yet")."""
    logged: list[ExperimentVariantOutcomes] = []
    if experiment.started_at is not None:
        logged = experiment_outcomes(experiment_id=experiment.pk, served_from=experiment.started_at)
    return experiment_results_judge(experiment=experiment, logged=logged)


def experiment_results_judge(
    *, experiment: Experiment, logged: Sequence[ExperimentVariantOutcomes]
) -> ExperimentResults:
    """The statistics of what the log holds for the experiment's variants (a variant without a row: zeros)."""
    configured = list(experiment.variants)
    by_name = {row.variant: row for row in logged}
    outcomes = [by_name.get(variant["name"]) or _empty(variant["name"]) for variant in configured]
    shoppers = [_shoppers(row) for row in outcomes]
    variants = [
        _variant_result(config, row, group) for config, row, group in zip(configured, outcomes, shoppers, strict=True)
    ]
    metric_order = [experiment.primary_metric, *(name for name in METRICS if name != experiment.primary_metric)]
    lifts = [lift for name in metric_order for lift in _lifts(shoppers, name)]
    total = sum(variant.shoppers for variant in variants)
    sample_ratio = (
        stats.sample_ratio_check(
            shoppers_per_variant={variant.name: variant.shoppers for variant in variants},
            weights={variant.name: variant.weight for variant in variants},
        )
        if total
        else None
    )
    breaches = _guardrail_breaches(experiment, variants)
    control = configured[0]["name"]
    primary = [lift for lift in lifts if lift.metric == experiment.primary_metric]
    verdict = stats.experiment_verdict(
        control=control,
        sample_ratio=sample_ratio or stats.SampleRatioCheck({}, {}, 0.0, 1.0, False),
        sequential_lifts=[lift.sequential for lift in primary],
        guardrail_breaches=breaches,
    )
    return ExperimentResults(
        experiment=experiment,
        variants=variants,
        lifts=lifts,
        sample_ratio=sample_ratio,
        guardrail_breaches=breaches,
        daily=_daily(outcomes),
        verdict=verdict,
        summary=_summary(experiment, verdict, primary, control),
    )


def experiment_results(*, experiment_id: int) -> ExperimentResults:
    """The results of the experiment with this id, or a 404 ApplicationError."""
    experiment = experiment_get(experiment_id=experiment_id)
    if experiment is None:
        raise ApplicationError(
            f"No experiment with id {experiment_id}.", code="not_found", status_code=status.HTTP_404_NOT_FOUND
        )
    return experiment_results_compute(experiment=experiment)
