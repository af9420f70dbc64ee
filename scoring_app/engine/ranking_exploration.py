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
exponentially in s = log t, where the trapezoid rule converges exponentially (error about exp(-pi^2 / step)); the
polynomials leave one row out through prefix and suffix products, so nothing is divided. `slot_marginals` and
`slate_draw` share that computation, so the logged propensities equal `slot_marginals` to rounding.

The trade-off (benchmarks/off_policy.py, BENCHMARKS.md "Issue 22: off-policy evaluation"): exploration costs
quality (an exploring slate is a worse-than-best ranking) and buys off-policy accuracy (the estimators' weights
stay bounded only where the logging policy puts mass on what a candidate would show). The defaults (settings
SCORE_RANKER_EXPLORATION_SHARE / _TEMPERATURE / _POOL) are the simulator's choice; see the settings' comment.

Pure numpy, no Django except `policy_from_settings`; the serving path and the simulator both call it, so the
benchmark exercises serving's code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Trapezoid step in s = log t: the quadrature error is about exp(-pi^2 / step) (5e-9 at 0.5).
_STEP = 0.5
# The integrand is below about w_i * t: starting at t = 1e-10 (softmax weights sum to 1) leaves out < 1e-10.
_T_LOW = 1e-10
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


def _logits(pool_scores: np.ndarray, temperature: float) -> np.ndarray:
    spread = float(pool_scores.std())
    if spread == 0.0 or not np.isfinite(spread):
        return np.zeros(len(pool_scores))
    standardized = (pool_scores - pool_scores.mean()) / spread
    clipped: np.ndarray = np.clip(standardized / max(temperature, 1e-6), -_LOGIT_CLIP, _LOGIT_CLIP)
    return clipped


def plackett_luce_marginals(*, logits: np.ndarray, k: int) -> np.ndarray:
    """(n, k): P(row at rank j) when k rows are drawn without replacement in proportion to exp(logits)."""
    n = len(logits)
    k = min(k, n)
    if n == 0 or k == 0:
        return np.zeros((n, k))
    weights = np.exp(logits - logits.max())
    weights /= weights.sum()
    # Beyond t_high every rank < k needs n - k + 1 rows below the row, all of them decayed: exp(-(their weight) t).
    slowest = np.sort(weights)[: n - k + 1].sum()
    t_high = 50.0 / slowest
    s = np.arange(np.log(_T_LOW), np.log(t_high) + _STEP, _STEP)
    t = np.exp(s)  # (g,)
    below = np.exp(-np.outer(t, weights))  # (g, n): P(row's perturbed logit is below the level)
    above = 1.0 - below
    # prefix[m] / suffix[m]: the polynomial in z (z counts rows above) over rows < m / rows >= m, degrees < k.
    prefix = np.zeros((n + 1, len(t), k))
    suffix = np.zeros((n + 1, len(t), k))
    prefix[0, :, 0] = 1.0
    suffix[n, :, 0] = 1.0
    for m in range(n):
        prefix[m + 1] = prefix[m] * below[:, m, None]
        prefix[m + 1, :, 1:] += prefix[m, :, :-1] * above[:, m, None]
        back = n - 1 - m
        suffix[back] = suffix[back + 1] * below[:, back, None]
        suffix[back, :, 1:] += suffix[back + 1, :, :-1] * above[:, back, None]
    others = np.zeros((n, len(t), k))  # every row but one: prefix[i] * suffix[i + 1], truncated at degree k
    for degree in range(k):
        others[:, :, degree:] += prefix[:n, :, degree, None] * suffix[1:, :, : k - degree]
    # d(measure) = w_i exp(-w_i t) dt = w_i * below_i * t ds
    density = (below * t[:, None] * weights[None, :]).T * _STEP  # (n, g)
    marginals: np.ndarray = np.einsum("ng,ngk->nk", density, others)
    return marginals


def _pool_marginals(*, pool_scores: np.ndarray, k: int, policy: ExplorationPolicy) -> np.ndarray:
    """(len(pool), k): the mixture's P(pool position at slot); pool_scores best first."""
    k = min(k, len(pool_scores))
    deterministic = np.eye(len(pool_scores), k)
    if policy.share <= 0.0:
        return deterministic
    drawn = plackett_luce_marginals(logits=_logits(pool_scores, policy.temperature), k=k)
    return (1.0 - policy.share) * deterministic + policy.share * drawn


def slate_draw(*, scores: np.ndarray, k: int, policy: ExplorationPolicy, rng: np.random.Generator) -> SlateDraw:
    """One ranker slate of min(k, len(scores)) rows under the policy, with each slot's propensity.

    The pool is the max(pool, k) best rows so that a drawn slate is always full."""
    scores = np.asarray(scores, dtype=np.float64)
    pool_rows = pool_rows_of(scores=scores, k=k, policy=policy)
    slots = min(k, len(pool_rows))
    if policy.share <= 0.0:
        return SlateDraw(rows=pool_rows[:slots], propensities=np.ones(slots), pool_rows=pool_rows)
    pool_scores = scores[pool_rows]
    if policy.share >= 1.0 or rng.random() < policy.share:
        perturbed = _logits(pool_scores, policy.temperature) + rng.gumbel(size=len(pool_rows))
        positions = np.argsort(-perturbed, kind="stable")[:slots]
    else:
        positions = np.arange(slots)
    marginals = _pool_marginals(pool_scores=pool_scores, k=slots, policy=policy)
    return SlateDraw(
        rows=pool_rows[positions],
        propensities=marginals[positions, np.arange(slots)],
        pool_rows=pool_rows,
    )


def slot_marginals(
    *, scores: np.ndarray, k: int, policy: ExplorationPolicy, rng: np.random.Generator, samples: int = 512
) -> np.ndarray:
    """(len(scores), k): P(row at slot) under the policy; 0 outside the pool (and in slots beyond len(scores)).

    Exact (see the module docstring): `rng` and `samples` are accepted for the agreed interface and not used."""
    del rng, samples
    scores = np.asarray(scores, dtype=np.float64)
    result = np.zeros((len(scores), k))
    pool_rows = pool_rows_of(scores=scores, k=k, policy=policy)
    slots = min(k, len(pool_rows))
    result[pool_rows, :slots] = _pool_marginals(pool_scores=scores[pool_rows], k=slots, policy=policy)
    return result
