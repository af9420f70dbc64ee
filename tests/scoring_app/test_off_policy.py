"""Off-policy evaluation (issue 22): the estimators on a small synthetic shop whose click model is known."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from scoring_app.engine.ranking_exploration import ExplorationPolicy, pool_logits, slate_draw, slot_marginals_batch
from scoring_app.off_policy import LoggedSlate, policy_evaluate

SLOTS = 3
POOL = 6
EXAMINATION = np.array([1.0, 0.6, 0.4])
POLICY = ExplorationPolicy(share=0.8, temperature=1.5, pool=POOL)


@dataclass(frozen=True)
class Shop:
    """A fixed set of requests (pools): each row's features, its attractiveness, and two rankers' scores."""

    features: list[np.ndarray]
    attractiveness: list[np.ndarray]
    logging_scores: list[np.ndarray]
    candidate_scores: list[np.ndarray]


def _shop(*, requests: int = 20, seed: int = 0) -> Shop:
    rng = np.random.default_rng(seed)
    features = [rng.normal(size=(POOL, 3)) for _ in range(requests)]
    truth = np.array([0.9, 0.5, -0.3])
    return Shop(
        features=features,
        attractiveness=[1 / (1 + np.exp(-(-1.5 + rows @ truth))) for rows in features],
        logging_scores=[rows @ np.array([0.4, 0.8, 0.2]) for rows in features],
        candidate_scores=[rows @ truth for rows in features],
    )


def _true_value(shop: Shop, scores: list[np.ndarray]) -> float:
    """The candidate's expected clicks per slate, exactly: its marginals times the click model."""
    marginals = slot_marginals_batch(scores=scores, k=SLOTS, policy=POLICY)
    return float(
        np.mean([(m * EXAMINATION * a[:, None]).sum() for m, a in zip(marginals, shop.attractiveness, strict=True)])
    )


def _log(shop: Shop, *, slates: int, rng: np.random.Generator) -> tuple[list[LoggedSlate], list[int]]:
    logged, requests = [], []
    for _ in range(slates):
        request = int(rng.integers(len(shop.features)))
        drawn = slate_draw(scores=shop.logging_scores[request], k=SLOTS, policy=POLICY, rng=rng)
        clicks = rng.random(SLOTS) < EXAMINATION * shop.attractiveness[request][drawn.rows]
        # the pool here is every row of the request, so pool rows are the request's rows
        logged.append(
            LoggedSlate(
                pool_features=shop.features[request],
                logging_scores=shop.logging_scores[request],
                shown=drawn.rows,
                propensities=drawn.propensities,
                rewards=clicks.astype(float),
            )
        )
        requests.append(request)
    return logged, requests


def _log_fast(shop: Shop, *, slates: int, rng: np.random.Generator) -> tuple[list[LoggedSlate], np.ndarray]:
    """What `_log` draws, for many slates at once: the same policy (Gumbel top-k over the pool's logits with
    probability `share`, else the top k), the propensities read from the marginals (which tests of the exploration
    module prove equal to `slate_draw`'s)."""
    orders = [np.argsort(-scores, kind="stable") for scores in shop.logging_scores]
    logits = [
        pool_logits(scores[order][None, :], POLICY.temperature)[0]
        for scores, order in zip(shop.logging_scores, orders, strict=True)
    ]
    marginals = slot_marginals_batch(scores=shop.logging_scores, k=SLOTS, policy=POLICY)
    requests = rng.integers(len(shop.features), size=slates)
    explore = rng.random(slates) < POLICY.share
    noise = rng.gumbel(size=(slates, POOL))
    logged = []
    for request, exploring, gumbel in zip(requests, explore, noise, strict=True):
        positions = np.argsort(-(logits[request] + gumbel))[:SLOTS] if exploring else np.arange(SLOTS)
        rows = orders[request][positions]
        clicks = rng.random(SLOTS) < EXAMINATION * shop.attractiveness[request][rows]
        logged.append(
            LoggedSlate(
                pool_features=shop.features[request],
                logging_scores=shop.logging_scores[request],
                shown=rows,
                propensities=marginals[request][rows, np.arange(SLOTS)],
                rewards=clicks.astype(float),
            )
        )
    return logged, requests


@pytest.fixture(scope="module")
def repetitions():
    """100 logs of 150 slates, each evaluated for the candidate: the estimates and the truth."""
    shop = _shop()
    truth = _true_value(shop, shop.candidate_scores)
    rng = np.random.default_rng(11)
    estimates = []
    for repetition in range(100):
        logged, requests = _log_fast(shop, slates=150, rng=rng)
        estimates.append(
            policy_evaluate(
                slates=logged,
                target_scores=[shop.candidate_scores[request] for request in requests],
                policy=POLICY,
                rng=np.random.default_rng(repetition),
            )
        )
    return truth, estimates


def test_the_logging_policy_evaluated_on_its_own_log_is_its_logged_mean():
    shop = _shop()
    logged, requests = _log(shop, slates=300, rng=np.random.default_rng(1))

    estimate = policy_evaluate(
        slates=logged,
        target_scores=[shop.logging_scores[request] for request in requests],
        policy=POLICY,
        rng=np.random.default_rng(0),
    )

    # every weight is 1: IPS and SNIPS are the logged mean, and the log is worth all its slates
    assert estimate.slates == 300 and estimate.impressions == 900
    assert estimate.ips.value == pytest.approx(estimate.logged_value, rel=1e-7)
    assert estimate.snips.value == pytest.approx(estimate.logged_value, rel=1e-7)
    assert estimate.effective_sample_size == pytest.approx(300, rel=1e-7)
    # DR adds the model's mean over the logging policy minus its mean over what was shown: close, not equal
    assert estimate.dr.low <= estimate.logged_value <= estimate.dr.high


def test_slates_of_fewer_slots_count_as_slates_with_no_reward_in_the_missing_slots():
    rng = np.random.default_rng(2)
    slates, targets = [], []
    for _ in range(200):
        rows = int(rng.integers(2, 8))  # pools of 2 give slates of 2 slots
        features = rng.normal(size=(rows, 2))
        scores = features @ np.array([1.0, 0.5])
        drawn = slate_draw(scores=scores, k=SLOTS, policy=POLICY, rng=rng)
        slates.append(
            LoggedSlate(features, scores, drawn.rows, drawn.propensities, (rng.random(len(drawn.rows)) < 0.3) * 1.0)
        )
        targets.append(scores)

    estimate = policy_evaluate(slates=slates, target_scores=targets, policy=POLICY, rng=rng)

    assert estimate.impressions < 600
    assert estimate.ips.value == pytest.approx(estimate.logged_value, rel=1e-7)
    assert estimate.snips.value == pytest.approx(estimate.logged_value, rel=1e-7)


def test_ips_is_unbiased_over_many_small_logs(repetitions):
    truth, estimates = repetitions
    values = np.array([estimate.ips.value for estimate in estimates])

    standard_error = values.std(ddof=1) / np.sqrt(len(values))
    assert abs(values.mean() - truth) < 3.5 * standard_error
    assert abs(values.mean() - truth) / truth < 0.03


def test_the_intervals_cover_the_truth_in_about_95_percent_of_logs(repetitions):
    truth, estimates = repetitions

    for kind in ("ips", "snips", "dr"):
        covered = np.mean([getattr(e, kind).low <= truth <= getattr(e, kind).high for e in estimates])
        assert covered >= 0.9, kind


def test_doubly_robust_varies_less_than_ips(repetitions):
    _, estimates = repetitions

    ips = np.var([estimate.ips.value for estimate in estimates])
    dr = np.var([estimate.dr.value for estimate in estimates])

    assert dr < ips


def test_the_effective_sample_size_is_the_weights_squared_sum_over_their_sum_of_squares():
    features = np.eye(3)
    # the candidate re-ranks the same pool without exploration: it shows rows 2, 1 (propensity 1 each)
    only = ExplorationPolicy(share=0.0, temperature=1.0, pool=3)
    slates = [
        LoggedSlate(features, np.zeros(3), np.array([2, 1]), np.array([0.5, 0.25]), np.array([1.0, 0.0])),
        LoggedSlate(features, np.zeros(3), np.array([2, 0]), np.array([0.5, 0.5]), np.array([0.0, 1.0])),
    ]
    targets = [np.array([0.0, 1.0, 2.0])] * 2

    estimate = policy_evaluate(slates=slates, target_scores=targets, policy=only, rng=np.random.default_rng(0))

    weights = np.array([2.0, 4.0, 2.0, 0.0])  # 1 / 0.5, 1 / 0.25, 1 / 0.5, and row 0 is never at slot 1
    assert estimate.effective_sample_size == pytest.approx(weights.sum() ** 2 / (weights**2).sum() / 2)
    assert estimate.ips.value == pytest.approx((2.0 * 1.0 + 0.0) / 2)
    assert estimate.logged_value == 1.0


def test_bad_logs_are_refused():
    features = np.eye(2)
    slate = LoggedSlate(features, np.zeros(2), np.array([0]), np.array([0.0]), np.array([1.0]))

    with pytest.raises(ValueError, match="propensity"):
        policy_evaluate(slates=[slate], target_scores=[np.zeros(2)], policy=POLICY, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="one array per slate"):
        policy_evaluate(slates=[slate], target_scores=[], policy=POLICY, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="distinct pool rows"):
        policy_evaluate(
            slates=[LoggedSlate(features, np.zeros(2), np.array([2]), np.array([0.5]), np.array([1.0]))],
            target_scores=[np.zeros(2)],
            policy=POLICY,
            rng=np.random.default_rng(0),
        )
    with pytest.raises(ValueError, match="one score per pool row"):
        policy_evaluate(
            slates=[LoggedSlate(features, np.zeros(2), np.array([1]), np.array([0.5]), np.array([1.0]))],
            target_scores=[np.zeros(3)],
            policy=POLICY,
            rng=np.random.default_rng(0),
        )
    with pytest.raises(ValueError, match="no logged slates"):
        policy_evaluate(slates=[], target_scores=[], policy=POLICY, rng=np.random.default_rng(0))
