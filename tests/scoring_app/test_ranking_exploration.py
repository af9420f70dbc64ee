"""The ranker path's exploration (issue 22): slates drawn from the pool, and each slot's exact propensity."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from scoring_app.engine.ranking_exploration import (
    ExplorationPolicy,
    plackett_luce_marginals,
    plackett_luce_marginals_batch,
    policy_from_settings,
    slate_draw,
    slot_marginals,
    slot_marginals_batch,
)


def _enumerated(logits: np.ndarray, k: int) -> np.ndarray:
    """P(row at rank) by summing every ordered draw of k rows: the definition, for small pools."""
    weights = np.exp(logits - logits.max())
    marginals = np.zeros((len(logits), k))
    for order in itertools.permutations(range(len(logits)), k):
        probability, left = 1.0, list(range(len(logits)))
        for row in order:
            probability *= weights[row] / weights[left].sum()  # summed afresh: subtracting a big weight loses digits
            left.remove(row)
        for rank, row in enumerate(order):
            marginals[row, rank] += probability
    return marginals


@pytest.mark.parametrize(("rows", "k", "temperature"), [(6, 3, 1.0), (7, 4, 0.2), (5, 5, 3.0), (8, 3, 0.05)])
def test_plackett_luce_marginals_equal_the_enumerated_probabilities(rows, k, temperature):
    logits = np.random.default_rng(rows).normal(size=rows) / temperature

    computed = plackett_luce_marginals(logits=logits, k=k)

    np.testing.assert_allclose(computed, _enumerated(logits, k), atol=1e-8)


def test_a_padded_pool_in_a_batch_has_the_marginals_of_the_pool_alone():
    rng = np.random.default_rng(1)
    logits = np.full((2, 8), -np.inf)
    logits[0, :5] = rng.normal(size=5)
    logits[1] = rng.normal(size=8)

    batch = plackett_luce_marginals_batch(logits=logits, k=3)

    np.testing.assert_allclose(batch[0, :5], _enumerated(logits[0, :5], 3), atol=1e-8)
    np.testing.assert_allclose(batch[1], _enumerated(logits[1], 3), atol=1e-8)
    assert (batch[0, 5:] == 0).all()


def test_each_slot_of_the_marginals_sums_to_one_and_rows_outside_the_pool_are_never_shown():
    scores = np.random.default_rng(2).normal(size=100)
    policy = ExplorationPolicy(share=0.3, temperature=1.0, pool=20)

    marginals = slot_marginals(scores=scores, k=10, policy=policy, rng=np.random.default_rng(0))

    np.testing.assert_allclose(marginals.sum(axis=0), 1.0, atol=1e-7)
    assert (marginals.sum(axis=1) <= 1 + 1e-7).all()
    outside = np.argsort(-scores)[20:]
    assert (marginals[outside] == 0).all()


def test_drawn_slates_propensities_are_the_marginals_and_match_the_frequencies_shown():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=9)
    policy = ExplorationPolicy(share=0.5, temperature=1.0, pool=6)
    marginals = slot_marginals(scores=scores, k=4, policy=policy, rng=rng)
    draws = 2500
    counts = np.zeros_like(marginals)

    for _ in range(draws):
        drawn = slate_draw(scores=scores, k=4, policy=policy, rng=rng)
        np.testing.assert_allclose(drawn.propensities, marginals[drawn.rows, np.arange(4)], rtol=1e-9)
        counts[drawn.rows, np.arange(4)] += 1

    # every cell within 4.5 binomial standard deviations of its probability
    tolerance = 4.5 * np.sqrt(marginals * (1 - marginals) / draws) + 1e-9
    assert (np.abs(counts / draws - marginals) <= tolerance).all()
    np.testing.assert_array_equal(np.sort(drawn.pool_rows), np.sort(np.argsort(-scores)[:6]))


def test_without_exploration_the_slate_is_the_top_k_with_propensity_one():
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.3, 0.8])
    policy = ExplorationPolicy(share=0.0, temperature=1.0, pool=4)

    drawn = slate_draw(scores=scores, k=3, policy=policy, rng=np.random.default_rng(0))

    assert drawn.rows.tolist() == [1, 5, 3]
    assert drawn.propensities.tolist() == [1.0, 1.0, 1.0]
    assert drawn.pool_rows.tolist() == [1, 5, 3, 2]
    marginals = slot_marginals(scores=scores, k=3, policy=policy, rng=np.random.default_rng(0))
    assert marginals[[1, 5, 3], [0, 1, 2]].tolist() == [1.0, 1.0, 1.0]
    assert marginals.sum() == 3.0


def test_a_pool_smaller_than_k_grows_to_k_and_fewer_candidates_give_a_shorter_slate():
    policy = ExplorationPolicy(share=1.0, temperature=1.0, pool=2)
    rng = np.random.default_rng(4)

    drawn = slate_draw(scores=rng.normal(size=10), k=4, policy=policy, rng=rng)
    short = slate_draw(scores=np.array([0.2, 0.1]), k=4, policy=policy, rng=rng)

    assert len(drawn.rows) == 4 and len(drawn.pool_rows) == 4
    assert sorted(short.rows.tolist()) == [0, 1]
    assert short.propensities.shape == (2,)


def test_missing_scores_rank_last():
    scores = np.array([np.nan, 0.2, 0.9, np.inf, 0.5])
    policy = ExplorationPolicy(share=0.0, temperature=1.0, pool=3)

    drawn = slate_draw(scores=scores, k=3, policy=policy, rng=np.random.default_rng(0))

    assert drawn.rows.tolist() == [2, 4, 1]


def test_the_batch_gives_each_pool_its_own_marginals():
    rng = np.random.default_rng(5)
    policy = ExplorationPolicy(share=0.4, temperature=0.8, pool=7)
    pools = [rng.normal(size=size) for size in (12, 5, 9)]

    batch = slot_marginals_batch(scores=pools, k=4, policy=policy)

    for scores, marginals in zip(pools, batch, strict=True):
        alone = slot_marginals(scores=scores, k=4, policy=policy, rng=rng)
        np.testing.assert_allclose(marginals, alone, atol=1e-8)


def test_the_policy_comes_from_the_settings(settings):
    settings.SCORE_RANKER_EXPLORATION_SHARE = 0.25
    settings.SCORE_RANKER_EXPLORATION_TEMPERATURE = 1.5
    settings.SCORE_RANKER_EXPLORATION_POOL = 14

    assert policy_from_settings() == ExplorationPolicy(share=0.25, temperature=1.5, pool=14)
