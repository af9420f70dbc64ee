"""Exploration on the ranker path: the logging policy that lets a candidate ranker be evaluated off-policy.

A deterministic ranker logs propensity 1 for every slot, so its log says nothing about any other ranking. Here a
share of the ranker's slates (`share`) is drawn instead of taken: a Plackett-Luce draw (softmax sampling without
replacement, done as Gumbel top-k) over the `pool` best-scored candidates, whose logits are the pool's scores
standardized and divided by `temperature`; the other slates are the deterministic top k. Every shown slot logs the
marginal probability of its item at its slot under that mixture,

    P(row at slot) = (1 - share) * [row is the ranker's slot-th best] + share * PL(row at slot),

which is what the item-position off-policy estimators (`scoring_app.off_policy`) divide by; the pool's rows are
logged too, so a candidate model can score the same pool later.

PL(row at slot) is computed exactly (to about 1e-9), not sampled: with Gumbel noise, a row is at rank j when exactly
j others beat its perturbed logit, so PL(i at j) = integral over t > 0 of w_i exp(-w_i t) [z^j] prod_{m != i}
(exp(-w_m t) + (1 - exp(-w_m t)) z) dt (w = softmax weights). The integrand is smooth and decays doubly
exponentially in s = log t, where the trapezoid rule converges exponentially (error about exp(-pi^2 / (2 step)));
the polynomials leave one row out through prefix and suffix products, so nothing is divided. `slot_marginals` and
`slate_draw` share that computation, so the logged propensities equal `slot_marginals` to rounding.

The trade-off (benchmarks/off_policy.py, a synthetic shop; BENCHMARKS.md "Issue 22: off-policy evaluation"):
exploration costs clicks (a drawn slate is a worse-than-best ranking) and buys off-policy accuracy, because the
item-position weights P_candidate / P_logged stay small only where the log puts real mass on what a candidate would
show at each slot. A share of 0.2 at temperature 1 over a pool of 30 cost about 4 % of the serving ranker's clicks
and bought almost nothing (errors near 19 % at 50,000 logged impressions: over 30 rows the log's probability of a
candidate's choice at its slot is too small). The defaults, share 0.5 at temperature 1.5 over a pool of 12, cost
5 % and keep self-normalized IPS and DR within 2 to 4.5 % on average there; share 0.3 costs 3 % for about a
third of the effective sample, share 0.7 costs 7.5 % for errors under 2 %. A small pool is what makes it cheap,
and it is also the limit: a candidate is evaluated as a re-ranker of the serving ranker's pool, so items it would
bring in from outside the pool are not seen (the simulator's `popularity` is worth 0.40 clicks per slate served
from all candidates, 0.71 re-ranking the pool).

Cost: one slate_draw is about 0.5 ms of CPU on a slow, busy machine for 30 scores, a pool of 12 and k = 10 (a third
of that on the fastest machine seen here), mostly numpy's per-call overhead in the loop over the pool's rows.

Pure numpy, no Django except `policy_from_settings`; the serving path and the simulator both call it, so the
benchmark exercises serving's code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Trapezoid step in s = log t: the quadrature error is about exp(-pi^2 / (2 step)) (1e-8 at 0.3).
_STEP = 0.3
# Rank 0 is exact (the softmax); for deeper ranks the integrand is below w_i t^2, so starting at t = 1e-4 (softmax
# weights sum to 1) leaves out < 1e-8.
_T_LOW = 1e-4
# Beyond t_high every rank < k has decayed below exp(-40) (times at most C(n - 1, k - 1)).
_DECAYED = 40.0
# Pools per chunk of a batch.
_BATCH = 32
# Logits are clipped so that a tiny temperature cannot overflow exp(); 30 nats is a weight ratio of 1e13.
_LOGIT_CLIP = 30.0


@dataclass(frozen=True)
class ExplorationPolicy:
    share: float  # share of ranker slates drawn stochastically (the rest: the deterministic top k)
    temperature: float  # softmax temperature over the pool's (standardized) scores, for drawn slates
    pool: int  # how many top-ranked candidates a drawn slate is drawn from (and are logged)


DETERMINISTIC = ExplorationPolicy(share=0.0, temperature=1.0, pool=0)


def policy_from_settings() -> ExplorationPolicy:
    """The serving policy: settings.SCORE_RANKER_EXPLORATION_{SHARE,TEMPERATURE,POOL}."""
    from django.conf import settings

    return ExplorationPolicy(
        share=float(settings.SCORE_RANKER_EXPLORATION_SHARE),
        temperature=float(settings.SCORE_RANKER_EXPLORATION_TEMPERATURE),
        pool=int(settings.SCORE_RANKER_EXPLORATION_POOL),
    )


@dataclass(frozen=True)
class SlateDraw:
    rows: np.ndarray  # (k,) rows of `scores`, in slot order
    propensities: np.ndarray  # (k,) each shown row's marginal probability of being at its slot under the policy
    pool_rows: np.ndarray  # (<= policy.pool,) rows of the pool, best first (what is logged for evaluation)


def pool_rows_of(*, scores: np.ndarray, k: int, policy: ExplorationPolicy) -> np.ndarray:
    """The pool, best first: the max(pool, k) best-scored rows (ties: the lower row first, so it is reproducible)."""
    size = min(len(scores), max(policy.pool, k))
    if size == 0:
        return np.zeros(0, dtype=np.int64)
    if size < len(scores):
        top = np.argpartition(-scores, size - 1)[:size]
        return top[np.lexsort((top, -scores[top]))]
    return np.lexsort((np.arange(len(scores)), -scores))


def _finite(scores: np.ndarray) -> np.ndarray:
    """Scores as floats, a missing (NaN or infinite) score ranked below every real one."""
    scores = np.asarray(scores, dtype=np.float64)
    bad = ~np.isfinite(scores)
    if bad.any():
        scores = scores.copy()
        scores[bad] = (scores[~bad].min() - 1.0) if (~bad).any() else 0.0
    return scores


def pool_logits(pool_scores: np.ndarray, temperature: float) -> np.ndarray:
    """(b, n): the logits a drawn slate samples from, each pool's scores (best first) standardized over its own rows
    (mean 0, sd 1) and divided by the temperature; NaN (padding) becomes -inf, a weight of 0."""
    valid = ~np.isnan(pool_scores)
    counts = np.maximum(valid.sum(axis=1, keepdims=True), 1)
    filled = np.where(valid, pool_scores, 0.0)
    mean = filled.sum(axis=1, keepdims=True) / counts
    spread = np.sqrt((np.where(valid, pool_scores - mean, 0.0) ** 2).sum(axis=1, keepdims=True) / counts)
    standardized = np.where(spread > 0, (filled - mean) / np.where(spread > 0, spread, 1.0), 0.0)
    logits = np.clip(standardized / max(temperature, 1e-6), -_LOGIT_CLIP, _LOGIT_CLIP)
    return np.where(valid, logits, -np.inf)


def plackett_luce_marginals(*, logits: np.ndarray, k: int) -> np.ndarray:
    """(n, k): P(row at rank j) when k rows are drawn without replacement in proportion to exp(logits)."""
    batch = plackett_luce_marginals_batch(logits=np.asarray(logits, dtype=np.float64)[None, :], k=k)
    single: np.ndarray = batch[0]
    return single


def plackett_luce_marginals_batch(*, logits: np.ndarray, k: int) -> np.ndarray:
    """(b, n, k) for b pools at once (the off-policy estimators' batch); -inf pads a shorter pool (weight 0)."""
    if len(logits) > _BATCH:  # in chunks: the polynomials take n * batch * k * grid doubles twice
        return np.concatenate(
            [
                plackett_luce_marginals_batch(logits=logits[at : at + _BATCH], k=k)
                for at in range(0, len(logits), _BATCH)
            ]
        )
    batch, n = logits.shape
    k = min(k, n)
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    result = np.zeros((batch, n, k))
    if k == 0:
        return result
    result[:, :, 0] = weights
    if k == 1:
        return result
    # The slowest decay of a rank < k: n - k + 1 rows below, the lightest (padding, weight 0, excluded).
    sizes = (weights > 0).sum(axis=1)
    ordered = np.sort(np.where(weights > 0, weights, np.inf), axis=1)
    slowest = min(ordered[b, : max(sizes[b] - k + 1, 1)].sum() for b in range(batch))
    t = np.exp(np.arange(np.log(_T_LOW), np.log(_DECAYED / slowest) + _STEP, _STEP))  # (g,)
    grid = len(t)
    below = np.exp(-weights.T[:, :, None] * t)[:, :, None, :]  # (n, b, 1, g): P(row's perturbed logit below level)
    # Polynomials in z (z counts rows above), degrees < k: polys[m, 0] over rows < m (a prefix), polys[m, 1] over rows
    # >= n - m (a suffix). Both advance in one multiplication per row by (below + above z), numpy's per-call cost
    # being most of the time for a pool of 10 to 30.
    factor_below = np.stack([below, below[::-1]], axis=1)  # (n, 2, b, 1, g): row m, and row n - 1 - m
    factor_above = 1.0 - factor_below
    polys = np.zeros((n + 1, 2, batch, k, grid))
    polys[0, :, :, 0] = 1.0
    shifted = np.empty((2, batch, k - 1, grid))
    for m in range(n):
        np.multiply(polys[m], factor_below[m], out=polys[m + 1])
        np.multiply(polys[m][..., :-1, :], factor_above[m], out=shifted)
        polys[m + 1][..., 1:, :] += shifted
    # d(measure) = w_i exp(-w_i t) dt = w_i * below_i * t ds
    density = below[:, :, 0, :] * (t * _STEP) * weights.T[:, :, None]  # (n, b, g)
    before = polys[:n, 0] * density[:, :, None, :]  # (n, b, k, g): rows < i, times row i's density
    after = polys[n - 1 :: -1, 1]  # (n, b, k, g): rows > i (the suffix from i + 1)
    reversed_after = after[:, :, ::-1, :]  # degrees reversed, so that degree rank - a is a slice
    for rank in range(1, k):
        # every row but one: sum over a of before[a] * after[rank - a]
        result[:, :, rank] = np.einsum("nbag,nbag->bn", before[:, :, : rank + 1], reversed_after[:, :, k - 1 - rank :])
    return result


def _plackett_luce_single(logits: np.ndarray, k: int) -> np.ndarray:
    """`plackett_luce_marginals_batch` of one pool with every weight positive, without the batch's bookkeeping:
    the same grid and arithmetic (so the same numbers), fewer numpy calls for slate_draw on the hot path."""
    n = len(logits)
    weights = np.exp(logits - logits.max())
    weights /= weights.sum()
    result = np.empty((n, k))
    result[:, 0] = weights
    if k == 1:
        return result
    slowest = np.sort(weights)[: n - k + 1].sum()
    t = np.exp(np.arange(np.log(_T_LOW), np.log(_DECAYED / slowest) + _STEP, _STEP))
    below = np.exp(np.outer(-weights, t))  # (n, g)
    factor_below = np.stack([below, below[::-1]], axis=1)[:, :, None, :]  # (n, 2, 1, g)
    factor_above = 1.0 - factor_below
    polys = np.zeros((n + 1, 2, k, len(t)))
    polys[0, :, 0] = 1.0
    shifted = np.empty((2, k - 1, len(t)))
    for m in range(n):
        np.multiply(polys[m], factor_below[m], out=polys[m + 1])
        np.multiply(polys[m][:, :-1], factor_above[m], out=shifted)
        polys[m + 1][:, 1:] += shifted
    before = polys[:n, 0] * (below * (t * _STEP) * weights[:, None])[:, None, :]  # (n, k, g)
    reversed_after = polys[n - 1 :: -1, 1][:, ::-1, :]
    for rank in range(1, k):
        result[:, rank] = np.einsum("nag,nag->n", before[:, : rank + 1], reversed_after[:, k - 1 - rank :])
    return result


def _pool_marginals_batch(*, pool_scores: np.ndarray, k: int, policy: ExplorationPolicy) -> np.ndarray:
    """(b, n, k): the mixture's P(pool position at slot) for b pools, each best first, NaN-padded to n."""
    deterministic = np.broadcast_to(np.eye(pool_scores.shape[1], k), (len(pool_scores), pool_scores.shape[1], k))
    if policy.share <= 0.0:
        return deterministic.copy()
    drawn = plackett_luce_marginals_batch(logits=pool_logits(pool_scores, policy.temperature), k=k)
    mixture: np.ndarray = (1.0 - policy.share) * deterministic + policy.share * drawn
    return mixture


def slate_draw(*, scores: np.ndarray, k: int, policy: ExplorationPolicy, rng: np.random.Generator) -> SlateDraw:
    """One ranker slate of min(k, len(scores)) rows under the policy, with each slot's propensity.

    The pool is the max(pool, k) best rows so that a drawn slate is always full."""
    scores = _finite(scores)
    pool_rows = pool_rows_of(scores=scores, k=k, policy=policy)
    slots = min(k, len(pool_rows))
    if policy.share <= 0.0:
        return SlateDraw(rows=pool_rows[:slots], propensities=np.ones(slots), pool_rows=pool_rows)
    logits = pool_logits(scores[pool_rows][None, :], policy.temperature)[0]
    if policy.share >= 1.0 or rng.random() < policy.share:
        positions = np.argsort(-(logits + rng.gumbel(size=len(pool_rows))), kind="stable")[:slots]
    else:
        positions = np.arange(slots)
    # the mixture's marginals (_pool_marginals_batch) at the shown cells only
    slot_order = np.arange(slots)
    drawn = _plackett_luce_single(logits, slots)[positions, slot_order]
    propensities = (1.0 - policy.share) * (positions == slot_order) + policy.share * drawn
    return SlateDraw(rows=pool_rows[positions], propensities=propensities, pool_rows=pool_rows)


def slot_marginals(
    *, scores: np.ndarray, k: int, policy: ExplorationPolicy, rng: np.random.Generator, samples: int = 512
) -> np.ndarray:
    """(len(scores), k): P(row at slot) under the policy; 0 outside the pool (and in slots beyond len(scores)).

    Exact (see the module docstring): `rng` and `samples` are accepted for the agreed interface and not used."""
    del rng, samples
    return slot_marginals_batch(scores=[scores], k=k, policy=policy)[0]


def slot_marginals_batch(*, scores: Sequence[np.ndarray], k: int, policy: ExplorationPolicy) -> list[np.ndarray]:
    """`slot_marginals` of many pools at once (the off-policy estimators evaluate thousands of slates)."""
    cleaned = [_finite(one) for one in scores]
    pools = [pool_rows_of(scores=one, k=k, policy=policy) for one in cleaned]
    width = max((len(pool) for pool in pools), default=0)
    slots = min(k, width)
    padded = np.full((len(pools), width), np.nan)
    for at, (one, pool) in enumerate(zip(cleaned, pools, strict=True)):
        padded[at, : len(pool)] = one[pool]
    marginals = _pool_marginals_batch(pool_scores=padded, k=slots, policy=policy) if width else None
    results = []
    for at, (one, pool) in enumerate(zip(cleaned, pools, strict=True)):
        result = np.zeros((len(one), k))
        if marginals is not None:
            # a pool shorter than k fills only its own slots: its padded rows have weight 0 and are dropped
            result[pool, : min(slots, len(pool))] = marginals[at, : len(pool), : min(slots, len(pool))]
        results.append(result)
    return results
