import math

import numpy as np
import pytest

from surface_app.experiments.statistics import (
    GuardrailBreach,
    GuardrailLimits,
    GuardrailObservation,
    LiftEstimate,
    Metric,
    RatioEstimate,
    SampleRatioCheck,
    SequentialLift,
    VariantShoppers,
    cuped_adjust,
    experiment_verdict,
    guardrails_check,
    lift_estimate,
    lifts_over_control,
    ratio_estimate,
    sample_ratio_check,
    sequential_lift,
    variant_summarize,
)

SIMULATIONS = 200


def clicks_only(*, variant: str, impressions, clicks, pre_clicks=None) -> VariantShoppers:
    zeros = np.zeros(len(impressions))
    pre_exposure = {} if pre_clicks is None else {Metric.CTR: pre_clicks}
    return VariantShoppers(variant, impressions, clicks, zeros, zeros, zeros, pre_exposure=pre_exposure)


def simulated_shoppers(rng, *, variant: str, shoppers: int, lift: float, ctr_shape=(2.0, 30.0)) -> VariantShoppers:
    """Clustered click data: each shopper has their own CTR (beta) and activity (gamma), impressions are Poisson and
    clicks binomial. Treatment multiplies every shopper's CTR by 1 + lift, so the true lift of the ratio of sums is
    exactly `lift` (CTR is independent of activity). The pre-exposure clicks come from the same CTR over 3 weeks."""
    activity = rng.gamma(4.0, 5.0, shoppers)
    ctr = rng.beta(*ctr_shape, shoppers)
    impressions = rng.poisson(activity)
    clicks = rng.binomial(impressions, np.minimum(ctr * (1 + lift), 1.0))
    pre_clicks = rng.binomial(rng.poisson(3 * activity), ctr)
    return clicks_only(variant=variant, impressions=impressions, clicks=clicks, pre_clicks=pre_clicks)


def test_ratio_estimate_matches_a_hand_computed_delta_method_variance():
    clicks, impressions = np.array([1.0, 0.0, 2.0]), np.array([10.0, 5.0, 5.0])

    estimate = ratio_estimate(numerators=clicks, denominators=impressions)

    # By hand: R = 3/20; Var(y) = 1, Cov(y, d) = 0, Var(d) = 25/3, mean(d) = 20/3, so
    # Var(R) = (1 + 0.15^2 * 25/3) / (3 * (20/3)^2) = 0.00890625.
    assert estimate.value == pytest.approx(0.15)
    assert estimate.std_error**2 == pytest.approx(0.00890625)
    covariance = np.cov(clicks, impressions)
    independent = (covariance[0, 0] - 2 * 0.15 * covariance[0, 1] + 0.15**2 * covariance[1, 1]) / (3 * (20 / 3) ** 2)
    assert estimate.std_error**2 == pytest.approx(independent)
    assert estimate.low == pytest.approx(0.15 - 1.959964 * math.sqrt(0.00890625))
    assert estimate.high == pytest.approx(0.15 + 1.959964 * math.sqrt(0.00890625))


def test_ratio_estimate_without_impressions_or_with_one_shopper_has_no_interval():
    empty = ratio_estimate(numerators=np.zeros(2), denominators=np.zeros(2))
    single = ratio_estimate(numerators=np.array([1.0]), denominators=np.array([4.0]))

    assert math.isnan(empty.value)
    assert single.value == 0.25
    assert math.isnan(single.std_error)


def test_variant_summarize_sums_totals_and_scales_rpm_per_thousand_impressions():
    shoppers = VariantShoppers(
        "control",
        impressions=[10, 5, 5],
        clicks=[1, 0, 2],
        add_to_carts=[1, 0, 1],
        purchases=[0, 0, 1],
        revenue=[0.0, 0.0, 30.0],
    )

    summary = variant_summarize(shoppers=shoppers)

    assert (summary.shoppers, summary.impressions, summary.clicks) == (3, 20, 3)
    assert (summary.add_to_carts, summary.purchases, summary.revenue) == (2, 1, 30.0)
    assert summary.ctr.value == pytest.approx(0.15)
    assert summary.add_to_cart_rate.value == pytest.approx(0.1)
    assert summary.conversion.value == pytest.approx(0.05)
    assert summary.rpm.value == pytest.approx(1500.0)
    assert summary.estimate(Metric.RPM).std_error == pytest.approx(
        1000 * ratio_estimate(numerators=shoppers.revenue, denominators=shoppers.impressions).std_error
    )


def test_variant_shoppers_rejects_arrays_of_different_lengths():
    with pytest.raises(ValueError, match="one value per shopper"):
        VariantShoppers("control", [1, 2], [0, 1], [0], [0, 0], [0, 0])


def test_lift_estimate_is_the_delta_method_on_the_log_ratio():
    control = RatioEstimate(value=0.10, std_error=0.01, low=0.0, high=0.0)
    treatment = RatioEstimate(value=0.12, std_error=0.012, low=0.0, high=0.0)

    lift = lift_estimate(variant="treatment", control=control, treatment=treatment)

    std_error = math.sqrt(0.1**2 + 0.1**2)  # each relative standard error is 10%
    assert lift.lift == pytest.approx(0.2)
    assert lift.log_ratio_std_error == pytest.approx(std_error)
    assert lift.low == pytest.approx(1.2 * math.exp(-1.959964 * std_error) - 1, rel=1e-5)
    assert lift.high == pytest.approx(1.2 * math.exp(1.959964 * std_error) - 1, rel=1e-5)
    assert lift.p_value == pytest.approx(math.erfc(math.log(1.2) / std_error / math.sqrt(2)))


def test_lift_intervals_cover_the_true_lift_in_a_a_and_a_b_simulations():
    rng = np.random.default_rng(20240601)
    coverage = {}
    for true_lift in (0.0, 0.10):
        covered = 0
        for _ in range(SIMULATIONS):
            variants = [
                simulated_shoppers(rng, variant="control", shoppers=2000, lift=0.0),
                simulated_shoppers(rng, variant="treatment", shoppers=2000, lift=true_lift),
            ]
            (lift,) = lifts_over_control(variants=variants, metric=Metric.CTR)
            covered += lift.low <= true_lift <= lift.high
        coverage[true_lift] = covered / SIMULATIONS

    assert coverage[0.0] >= 0.93, coverage
    assert coverage[0.10] >= 0.93, coverage


def test_sample_ratio_check_alarms_on_a_52_48_split_of_a_50_50_experiment():
    srm = sample_ratio_check(
        shoppers_per_variant={"control": 10_400, "treatment": 9_600}, weights={"control": 1, "treatment": 1}
    )

    assert srm.alarm
    assert srm.chi_square == pytest.approx(32.0)  # 2 * 400^2 / 10,000
    assert srm.expected == {"control": 10_000.0, "treatment": 10_000.0}


def test_sample_ratio_check_stays_quiet_on_honest_splits():
    rng = np.random.default_rng(7)
    for _ in range(50):
        control = int(rng.binomial(20_000, 0.5))
        srm = sample_ratio_check(
            shoppers_per_variant={"control": control, "treatment": 20_000 - control},
            weights={"control": 1, "treatment": 1},
        )
        assert not srm.alarm
    weighted = sample_ratio_check(shoppers_per_variant={"a": 9_000, "b": 1_020}, weights={"a": 90, "b": 10})
    assert not weighted.alarm


def test_cuped_cuts_the_variance_and_keeps_the_lift_unbiased():
    rng = np.random.default_rng(11)
    true_lift, plain_lifts, adjusted_lifts, reductions = 0.10, [], [], []
    for _ in range(100):
        variants = [
            simulated_shoppers(rng, variant="control", shoppers=2000, lift=0.0, ctr_shape=(1.0, 10.0)),
            simulated_shoppers(rng, variant="treatment", shoppers=2000, lift=true_lift, ctr_shape=(1.0, 10.0)),
        ]
        control, treatment = cuped_adjust(variants=variants, metric=Metric.CTR)
        adjusted = lift_estimate(variant="treatment", control=control.adjusted, treatment=treatment.adjusted)
        plain = lift_estimate(variant="treatment", control=control.unadjusted, treatment=treatment.unadjusted)
        plain_lifts.append(plain.lift)
        adjusted_lifts.append(adjusted.lift)
        reductions.append(treatment.variance_reduction)
        assert treatment.adjusted.std_error < treatment.unadjusted.std_error

    assert np.mean(reductions) > 0.30
    assert np.mean(adjusted_lifts) == pytest.approx(true_lift, abs=0.01)
    assert np.var(adjusted_lifts) < 0.8 * np.var(plain_lifts)


def test_cuped_needs_a_covariate_for_every_variant():
    without = clicks_only(variant="control", impressions=np.ones(3), clicks=np.zeros(3))

    with pytest.raises(ValueError, match="pre_exposure"):
        cuped_adjust(variants=[without, without], metric=Metric.CTR)


def test_sequential_lift_is_the_normal_mixture_msprt():
    lift = LiftEstimate("treatment", math.expm1(0.05), 0.0, 0.0, 0.0, log_ratio=0.05, log_ratio_std_error=0.02)

    result = sequential_lift(lift=lift, mixing_variance=0.01)

    variance, spread = 0.02**2, 0.02**2 + 0.01
    likelihood_ratio = math.sqrt(variance / spread) * math.exp(0.01 * 0.05**2 / (2 * variance * spread))
    assert result.p_value == pytest.approx(1 / likelihood_ratio)
    # The interval excludes 0 exactly when the p-value is below alpha, and is wider than the fixed-horizon one.
    assert (result.low > 0) == (result.p_value < 0.05)
    assert result.low < math.expm1(0.05 - 1.959964 * 0.02)


def test_always_valid_test_keeps_false_winners_rare_under_daily_looks():
    rng = np.random.default_rng(314)
    looks, shoppers_per_look = 10, 400
    sequential_false_winners = naive_false_winners = 0
    for _ in range(SIMULATIONS):
        control = simulated_shoppers(rng, variant="control", shoppers=looks * shoppers_per_look, lift=0.0)
        treatment = simulated_shoppers(rng, variant="treatment", shoppers=looks * shoppers_per_look, lift=0.0)
        sequential_winner = naive_winner = False
        for look in range(1, looks + 1):
            enrolled = slice(0, look * shoppers_per_look)
            lift = lift_estimate(
                variant="treatment",
                control=ratio_estimate(numerators=control.clicks[enrolled], denominators=control.impressions[enrolled]),
                treatment=ratio_estimate(
                    numerators=treatment.clicks[enrolled], denominators=treatment.impressions[enrolled]
                ),
            )
            naive_winner |= lift.p_value < 0.05
            always_valid = sequential_lift(lift=lift)
            sequential_winner |= always_valid.low > 0 or always_valid.high < 0
        sequential_false_winners += sequential_winner
        naive_false_winners += naive_winner

    sequential_rate = sequential_false_winners / SIMULATIONS
    naive_rate = naive_false_winners / SIMULATIONS
    assert sequential_rate <= 0.055, sequential_rate
    assert naive_rate > sequential_rate + 0.05, (naive_rate, sequential_rate)


def test_guardrails_check_flags_each_limit_broken():
    limits = GuardrailLimits(p99_ms_max=250, degraded_rate_max=0.01)
    observations = [
        GuardrailObservation("control", p99_ms=240, degraded_rate=0.002),
        GuardrailObservation("treatment", p99_ms=310, degraded_rate=0.02),
    ]

    breaches = guardrails_check(observations=observations, limits=limits)

    assert breaches == (
        GuardrailBreach("treatment", "p99_ms", 310, 250),
        GuardrailBreach("treatment", "degraded_rate", 0.02, 0.01),
    )


def _srm(*, alarm: bool) -> SampleRatioCheck:
    return SampleRatioCheck(observed={}, expected={}, chi_square=0.0, p_value=1e-9 if alarm else 0.5, alarm=alarm)


def _sequential(variant: str, low: float, high: float) -> SequentialLift:
    return SequentialLift(variant=variant, lift=(low + high) / 2, low=low, high=high, p_value=0.5)


def test_verdict_srm_comes_before_guardrails_and_winners():
    breach = GuardrailBreach("treatment", "p99_ms", 310, 250)

    verdict = experiment_verdict(
        control="control",
        sample_ratio=_srm(alarm=True),
        sequential_lifts=[_sequential("treatment", 0.02, 0.08)],
        guardrail_breaches=[breach],
    )

    assert verdict == "stop: SRM"


def test_verdict_guardrail_breach_comes_before_a_winner():
    verdict = experiment_verdict(
        control="control",
        sample_ratio=_srm(alarm=False),
        sequential_lifts=[_sequential("treatment", 0.02, 0.08)],
        guardrail_breaches=[GuardrailBreach("treatment", "p99_ms", 310, 250)],
    )

    assert verdict == "guardrail breached: treatment p99_ms 310 > 250"


def test_verdict_names_the_winner_or_waits():
    def verdict(*lifts):
        return experiment_verdict(control="control", sample_ratio=_srm(alarm=False), sequential_lifts=list(lifts))

    assert verdict(_sequential("b", 0.01, 0.05), _sequential("c", 0.02, 0.10)) == "winner: c"
    assert verdict(_sequential("b", -0.01, 0.05), _sequential("c", 0.02, 0.10)) == "winner: c"
    assert verdict(_sequential("b", -0.08, -0.02)) == "winner: control"
    assert verdict(_sequential("b", -0.08, -0.02), _sequential("c", -0.05, 0.01)) == "no difference yet"
    assert verdict(_sequential("b", -0.01, 0.05)) == "no difference yet"
