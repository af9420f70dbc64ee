"""The honest statistics of an A/B test: per-variant ratio metrics with shopper-clustered intervals, lifts over
control, sample-ratio mismatch, CUPED, an always-valid sequential test, guardrails and the verdict.

Pure functions over per-shopper totals (the shopper is the unit of randomization, so every variance is computed
from per-shopper numerator/denominator pairs, never from impressions as if they were independent). No Django, no
I/O: callers load the totals and pass them in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
from scipy import stats

DEFAULT_CONFIDENCE = 0.95
SRM_ALARM_P_VALUE = 0.001
# Prior variance of the log-lift in the mSPRT mixture: a standard deviation of 10% relative lift, the size of
# effect ranking changes usually have. Smaller values favour detecting small lifts late, larger ones big lifts early.
DEFAULT_MIXING_VARIANCE = 0.1**2


class Metric(StrEnum):
    """A ratio metric over impressions; the value names the field of `VariantSummary` that holds it."""

    CTR = "ctr"
    ADD_TO_CART_RATE = "add_to_cart_rate"
    CONVERSION = "conversion"
    RPM = "rpm"


# Each metric's numerator (a field of VariantShoppers) and scale; the denominator is always impressions.
METRIC_NUMERATORS: dict[Metric, tuple[str, float]] = {
    Metric.CTR: ("clicks", 1.0),
    Metric.ADD_TO_CART_RATE: ("add_to_carts", 1.0),
    Metric.CONVERSION: ("purchases", 1.0),
    Metric.RPM: ("revenue", 1000.0),
}


@dataclass(frozen=True, eq=False)
class VariantShoppers:
    """One variant's shoppers, one array entry per shopper: their totals over the experiment. `pre_exposure` holds,
    per metric, each shopper's numerator of that metric in the weeks before exposure (the CUPED covariate)."""

    variant: str
    impressions: np.ndarray
    clicks: np.ndarray
    add_to_carts: np.ndarray
    purchases: np.ndarray
    revenue: np.ndarray
    pre_exposure: Mapping[Metric, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shoppers = len(self.impressions)
        for name in ("impressions", "clicks", "add_to_carts", "purchases", "revenue"):
            values = np.asarray(getattr(self, name), dtype=float)
            if values.shape != (shoppers,):
                raise ValueError(f"{self.variant}: {name} must hold one value per shopper")
            object.__setattr__(self, name, values)
        covariates = {Metric(metric): np.asarray(values, dtype=float) for metric, values in self.pre_exposure.items()}
        if any(values.shape != (shoppers,) for values in covariates.values()):
            raise ValueError(f"{self.variant}: pre_exposure must hold one value per shopper")
        object.__setattr__(self, "pre_exposure", covariates)

    def numerators(self, metric: Metric) -> np.ndarray:
        name, _scale = METRIC_NUMERATORS[metric]
        return getattr(self, name)


@dataclass(frozen=True)
class RatioEstimate:
    """A ratio of sums with its shopper-clustered standard error and confidence interval (already scaled)."""

    value: float
    std_error: float
    low: float
    high: float


@dataclass(frozen=True)
class VariantSummary:
    variant: str
    shoppers: int
    impressions: float
    clicks: float
    add_to_carts: float
    purchases: float
    revenue: float
    ctr: RatioEstimate
    add_to_cart_rate: RatioEstimate
    conversion: RatioEstimate
    rpm: RatioEstimate

    def estimate(self, metric: Metric) -> RatioEstimate:
        return getattr(self, metric.value)


@dataclass(frozen=True)
class LiftEstimate:
    """Relative lift of `variant` over control, lift = R_t / R_c - 1, with a fixed-horizon interval and p-value.
    `log_ratio` and its standard error are what the interval and the sequential test are built on."""

    variant: str
    lift: float
    low: float
    high: float
    p_value: float
    log_ratio: float
    log_ratio_std_error: float


@dataclass(frozen=True)
class SequentialLift:
    """An always-valid interval and p-value for the lift: valid however often and whenever they are looked at."""

    variant: str
    lift: float
    low: float
    high: float
    p_value: float


@dataclass(frozen=True)
class SampleRatioCheck:
    observed: Mapping[str, int]
    expected: Mapping[str, float]
    chi_square: float
    p_value: float
    alarm: bool


@dataclass(frozen=True)
class CupedEstimate:
    """A variant's metric before and after CUPED; `variance_reduction` is 1 - Var(adjusted) / Var(unadjusted)."""

    variant: str
    adjusted: RatioEstimate
    unadjusted: RatioEstimate
    theta: float
    variance_reduction: float


@dataclass(frozen=True)
class GuardrailLimits:
    p99_ms_max: float
    degraded_rate_max: float


@dataclass(frozen=True)
class GuardrailObservation:
    variant: str
    p99_ms: float
    degraded_rate: float


@dataclass(frozen=True)
class GuardrailBreach:
    variant: str
    guardrail: str  # "p99_ms" or "degraded_rate"
    value: float
    limit: float

    def describe(self) -> str:
        return f"{self.variant} {self.guardrail} {self.value:g} > {self.limit:g}"


def _z_for(confidence: float) -> float:
    return float(stats.norm.ppf(0.5 + confidence / 2))


def ratio_estimate(
    *, numerators: np.ndarray, denominators: np.ndarray, scale: float = 1.0, confidence: float = DEFAULT_CONFIDENCE
) -> RatioEstimate:
    """sum(y) / sum(d) with the delta-method variance for a ratio of sums clustered by shopper:
    Var(R) ~ [Var(y) - 2R Cov(y, d) + R^2 Var(d)] / (n mean(d)^2), sample (n - 1) moments over shoppers."""
    y, d = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    shoppers, denominator_sum = len(d), float(d.sum())
    if shoppers == 0 or denominator_sum <= 0:
        return RatioEstimate(value=math.nan, std_error=math.nan, low=math.nan, high=math.nan)
    ratio = float(y.sum()) / denominator_sum
    if shoppers < 2:
        return RatioEstimate(value=ratio * scale, std_error=math.nan, low=math.nan, high=math.nan)
    linearized = _linearized(y=y, d=d, ratio=ratio)
    std_error = math.sqrt(float(linearized.var(ddof=1)) / shoppers) * scale
    half_width = _z_for(confidence) * std_error
    value = ratio * scale
    return RatioEstimate(value=value, std_error=std_error, low=value - half_width, high=value + half_width)


def _linearized(*, y: np.ndarray, d: np.ndarray, ratio: float) -> np.ndarray:
    """Per-shopper linearization (y - R d) / mean(d): its sample variance / n is exactly the delta-method Var(R)."""
    return (y - ratio * d) / d.mean()


def variant_summarize(*, shoppers: VariantShoppers, confidence: float = DEFAULT_CONFIDENCE) -> VariantSummary:
    """Totals and every ratio metric of one variant, each with its shopper-clustered interval."""
    estimates = {
        metric.value: ratio_estimate(
            numerators=shoppers.numerators(metric),
            denominators=shoppers.impressions,
            scale=METRIC_NUMERATORS[metric][1],
            confidence=confidence,
        )
        for metric in Metric
    }
    return VariantSummary(
        variant=shoppers.variant,
        shoppers=len(shoppers.impressions),
        impressions=float(shoppers.impressions.sum()),
        clicks=float(shoppers.clicks.sum()),
        add_to_carts=float(shoppers.add_to_carts.sum()),
        purchases=float(shoppers.purchases.sum()),
        revenue=float(shoppers.revenue.sum()),
        **estimates,
    )


def lift_estimate(
    *, variant: str, control: RatioEstimate, treatment: RatioEstimate, confidence: float = DEFAULT_CONFIDENCE
) -> LiftEstimate:
    """Lift of treatment over control by the delta method on the log ratio: Var(log R_t - log R_c) ~
    Var(R_t)/R_t^2 + Var(R_c)/R_c^2 (independent groups). The interval exp(log ratio +- z se) - 1 stays above -100%
    and is less skewed than one on R_t/R_c - 1 directly. The p-value is two-sided for lift = 0."""
    if not (control.value > 0 and treatment.value > 0):
        return LiftEstimate(variant, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)
    log_ratio = math.log(treatment.value / control.value)
    std_error = math.hypot(treatment.std_error / treatment.value, control.std_error / control.value)
    half_width = _z_for(confidence) * std_error
    p_value = float(2 * stats.norm.sf(abs(log_ratio) / std_error)) if std_error > 0 else math.nan
    return LiftEstimate(
        variant=variant,
        lift=math.expm1(log_ratio),
        low=math.expm1(log_ratio - half_width),
        high=math.expm1(log_ratio + half_width),
        p_value=p_value,
        log_ratio=log_ratio,
        log_ratio_std_error=std_error,
    )


def lifts_over_control(
    *, variants: Sequence[VariantShoppers], metric: Metric, confidence: float = DEFAULT_CONFIDENCE
) -> tuple[LiftEstimate, ...]:
    """The lift of every variant after the first (the control) on one metric."""
    summaries = [variant_summarize(shoppers=shoppers, confidence=confidence) for shoppers in variants]
    control = summaries[0].estimate(metric)
    return tuple(
        lift_estimate(
            variant=summary.variant, control=control, treatment=summary.estimate(metric), confidence=confidence
        )
        for summary in summaries[1:]
    )


def sample_ratio_check(
    *, shoppers_per_variant: Mapping[str, int], weights: Mapping[str, float], alarm_p_value: float = SRM_ALARM_P_VALUE
) -> SampleRatioCheck:
    """Chi-square goodness of fit of the shoppers each variant received against its configured weight. An alarm
    (p < 0.001 by default: strict, because every experiment is checked) means assignment or logging is broken and
    no other statistic of the experiment can be trusted."""
    if set(shoppers_per_variant) != set(weights):
        raise ValueError("shoppers_per_variant and weights must name the same variants")
    names = list(weights)
    observed = np.array([shoppers_per_variant[name] for name in names], dtype=float)
    shares = np.array([weights[name] for name in names], dtype=float)
    expected = observed.sum() * shares / shares.sum()
    chi_square, p_value = stats.chisquare(observed, expected)
    return SampleRatioCheck(
        observed=dict(shoppers_per_variant),
        expected=dict(zip(names, expected.tolist(), strict=True)),
        chi_square=float(chi_square),
        p_value=float(p_value),
        alarm=bool(p_value < alarm_p_value),
    )


def cuped_adjust(
    *, variants: Sequence[VariantShoppers], metric: Metric, confidence: float = DEFAULT_CONFIDENCE
) -> tuple[CupedEstimate, ...]:
    """CUPED for a ratio metric: each shopper's linearized metric L = (y - R d) / mean(d) is regressed on their
    pre-exposure covariate X, with one theta pooled across variants (within-variant moments, so a treatment effect
    cannot leak into it). The adjusted ratio is R - theta (mean X_variant - mean X_all) and its variance
    Var(L - theta X) / n. Unbiased because X was measured before exposure and so is independent of assignment."""
    if any(metric not in shoppers.pre_exposure for shoppers in variants):
        raise ValueError(f"every variant needs a pre_exposure covariate for {metric}")
    scale = METRIC_NUMERATORS[metric][1]
    linearized, covariates, ratios = [], [], []
    for shoppers in variants:
        y, d = shoppers.numerators(metric), shoppers.impressions
        ratio = float(y.sum() / d.sum())
        ratios.append(ratio)
        linearized.append(_linearized(y=y, d=d, ratio=ratio))
        covariates.append(shoppers.pre_exposure[metric])
    centered = [x - x.mean() for x in covariates]
    theta = sum(float(lin @ x) for lin, x in zip(linearized, centered, strict=True)) / sum(
        float(x @ x) for x in centered
    )
    overall_covariate_mean = float(np.concatenate(covariates).mean())
    z = _z_for(confidence)
    results = []
    for shoppers, lin, x, ratio in zip(variants, linearized, covariates, ratios, strict=True):
        shopper_count = len(lin)
        unadjusted_variance = float(lin.var(ddof=1))
        adjusted_variance = float((lin - theta * x).var(ddof=1))
        value = (ratio - theta * (float(x.mean()) - overall_covariate_mean)) * scale
        std_error = math.sqrt(adjusted_variance / shopper_count) * scale
        unadjusted_error = math.sqrt(unadjusted_variance / shopper_count) * scale
        results.append(
            CupedEstimate(
                variant=shoppers.variant,
                adjusted=RatioEstimate(value, std_error, value - z * std_error, value + z * std_error),
                unadjusted=RatioEstimate(
                    ratio * scale,
                    unadjusted_error,
                    ratio * scale - z * unadjusted_error,
                    ratio * scale + z * unadjusted_error,
                ),
                theta=theta,
                variance_reduction=1 - adjusted_variance / unadjusted_variance,
            )
        )
    return tuple(results)


def sequential_lift(
    *,
    lift: LiftEstimate,
    mixing_variance: float = DEFAULT_MIXING_VARIANCE,
    confidence: float = DEFAULT_CONFIDENCE,
) -> SequentialLift:
    """The normal-mixture mSPRT (Johari et al. 2017) on the delta-method log ratio (estimate theta_hat, variance V):
    Lambda = sqrt(V / (V + tau^2)) exp(tau^2 theta_hat^2 / (2 V (V + tau^2))) is a martingale under no lift, so the
    p-value min(1, 1/Lambda) and the confidence sequence
    theta_hat +- sqrt(V (V + tau^2) / tau^2 * (log((V + tau^2) / V) + 2 log(1/alpha)))
    hold at every look at once: checking daily and stopping at the first significant look keeps the false-winner
    rate at alpha. With several treatments, divide alpha among them (Bonferroni) through `confidence`."""
    variance = lift.log_ratio_std_error**2
    if not (variance > 0) or math.isnan(lift.log_ratio):
        return SequentialLift(lift.variant, lift.lift, math.nan, math.nan, math.nan)
    alpha = 1 - confidence
    spread = variance + mixing_variance
    log_likelihood_ratio = 0.5 * math.log(variance / spread) + (
        mixing_variance * lift.log_ratio**2 / (2 * variance * spread)
    )
    p_value = math.exp(-log_likelihood_ratio) if log_likelihood_ratio > 0 else 1.0
    half_width = math.sqrt(
        variance * spread / mixing_variance * (math.log(spread / variance) + 2 * math.log(1 / alpha))
    )
    return SequentialLift(
        variant=lift.variant,
        lift=lift.lift,
        low=math.expm1(lift.log_ratio - half_width),
        high=math.expm1(lift.log_ratio + half_width),
        p_value=min(1.0, p_value),
    )


def guardrails_check(
    *, observations: Sequence[GuardrailObservation], limits: GuardrailLimits
) -> tuple[GuardrailBreach, ...]:
    """Every variant whose serving p99 or degraded rate is above its limit."""
    breaches = []
    for observed in observations:
        if observed.p99_ms > limits.p99_ms_max:
            breaches.append(GuardrailBreach(observed.variant, "p99_ms", observed.p99_ms, limits.p99_ms_max))
        if observed.degraded_rate > limits.degraded_rate_max:
            breaches.append(
                GuardrailBreach(observed.variant, "degraded_rate", observed.degraded_rate, limits.degraded_rate_max)
            )
    return tuple(breaches)


def experiment_verdict(
    *,
    control: str,
    sample_ratio: SampleRatioCheck,
    sequential_lifts: Sequence[SequentialLift],
    guardrail_breaches: Sequence[GuardrailBreach] = (),
) -> str:
    """One line for the experiment, first match wins:
    1. "stop: SRM": with a broken split nothing else can be trusted, not even the guardrails' comparison.
    2. "guardrail breached: ...": a variant that hurts serving is stopped even while it is winning.
    3. "winner: <variant>": the treatment whose always-valid lift interval lies above 0 (the largest lift if several),
       or the control when every treatment's interval lies below 0.
    4. "no difference yet"."""
    if sample_ratio.alarm:
        return "stop: SRM"
    if guardrail_breaches:
        return "guardrail breached: " + "; ".join(breach.describe() for breach in guardrail_breaches)
    winners = [result for result in sequential_lifts if result.low > 0]
    if winners:
        return f"winner: {max(winners, key=lambda result: result.lift).variant}"
    if sequential_lifts and all(result.high < 0 for result in sequential_lifts):
        return f"winner: {control}"
    return "no difference yet"
