"""Off-policy evaluation: what a candidate ranker (or `popularity`) would earn per slate, from the serving log.

The serving ranker logs, per slate, the pool it drew from (features and its scores), the rows shown in slot order,
each shown row's marginal probability of being at its slot (`scoring_app.engine.ranking_exploration`) and each
slot's reward (a click, or revenue). The candidate is assumed served with the same exploration policy, re-ranking
the same pool; its marginals P_c(row at slot) are computed exactly from its scores of the pool.

Estimators, per slate, under the additive item-position reward model (a slate's reward is the sum over its slots of
a reward that depends only on the row and the slot: the "pseudo-inverse" / item-position estimator):

- IPS: sum over slots of w * reward, w = P_c(shown row at slot) / P_logged(shown row at slot). Unbiased.
- SNIPS: per slot, sum(w * reward) / sum(w) over the slates that have the slot (E[w] = 1 there), times their share
  of the slates, summed over slots. Slightly biased, much less variable when the weights are.
- DR: a reward model's prediction of the candidate's slate (sum over rows and slots of P_c * predicted reward) plus
  the IPS of the model's residuals. Unbiased if either the propensities or the model are right; the model (a
  logistic regression of the reward on the pool's features and a per-slot offset, a position-based click model;
  least squares when rewards are not 0/1) is cross-fitted on two halves of the slates, so that no slate's residual
  is scored by a model trained on it and the interval stays honest.

Intervals are 95 % normal intervals, the CLT over slates (each slate's slots are one cluster: its terms are summed
before the variance is taken; SNIPS by the delta method). The effective sample size (sum w)^2 / sum w^2 over slot
weights, divided by the slots per slate, says how many logged slates the estimate is worth (the log's own slates
when the candidate is the logging policy).

What biases them: interactions between slots (a click on slot 2 that depends on what slot 1 shows: the additive
model ignores it; position-based examination, which the simulator has, is fine); the candidate putting mass where
the log has none (rows outside the logged pool cannot be evaluated, so the candidate is evaluated as a re-ranker
of the serving pool; with exploration off, every propensity is 1 and only the serving ranking itself has support);
and propensities that are tiny where the candidate's are large (unbiased, but the weights' variance, which the
effective sample size shows, and intervals that cover less than 95 % when a few huge weights dominate). The
logged propensities are used as logged; `logging_scores` stay in the record so that they can be recomputed
(`slot_marginals`) and checked.

How good (benchmarks/off_policy.py, a SYNTHETIC shop with a position-based click model; BENCHMARKS.md "Issue 22:
off-policy evaluation"): with the default exploration, SNIPS and DR are within about 2 to 5 % of a candidate's
served value at 50,000 logged impressions; 5,000 slates evaluate in a second or two. Pure numpy; rewards and
propensities come from the log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scoring_app.engine.ranking_exploration import ExplorationPolicy, slot_marginals_batch

Z_95 = 1.959963984540054
# The reward model's L2 penalty (standardized features), and its Newton iterations.
RIDGE = 1.0
NEWTON_ITERATIONS = 25
# Cross-fitting: the reward model for one fold's slates is fitted on the other folds.
FOLDS = 2


@dataclass(frozen=True)
class LoggedSlate:
    pool_features: np.ndarray  # (N, F) the pool's feature rows (columns named by `feature_names` of the batch)
    logging_scores: np.ndarray  # (N,) the serving ranker's scores of the pool (what the policy drew from)
    shown: np.ndarray  # (k,) pool rows shown, in slot order
    propensities: np.ndarray  # (k,) logged P(shown row at its slot) under the logging policy
    rewards: np.ndarray  # (k,) the reward of each slot (1.0 click / 0.0, or revenue)


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float  # per slate, with its 95% interval


@dataclass(frozen=True)
class PolicyEstimate:
    slates: int
    impressions: int
    logged_value: float  # the logging policy's own mean value per slate (on-policy)
    ips: Estimate
    snips: Estimate
    dr: Estimate
    effective_sample_size: float  # (sum w)^2 / sum w^2 over slot weights, in slates


@dataclass(frozen=True)
class _Batch:
    """The slates flattened: one row per shown slot, plus each slate's pool for the direct-method term."""

    slate_of_slot: np.ndarray  # (I,) slate index of each shown slot
    slot: np.ndarray  # (I,) slot position
    weights: np.ndarray  # (I,) P_c / P_logged
    rewards: np.ndarray  # (I,)
    shown_features: np.ndarray  # (I, F)
    candidate_marginals: list[np.ndarray]  # per slate (N, k): P_c(row at slot)


def policy_evaluate(
    *,
    slates: Sequence[LoggedSlate],
    target_scores: Sequence[np.ndarray],
    policy: ExplorationPolicy,
    rng: np.random.Generator,
) -> PolicyEstimate:
    """IPS, SNIPS and DR estimates of the candidate's value per slate, with 95 % intervals and the ESS.

    `target_scores[i]` are the candidate's scores of slate i's pool; `rng` draws the cross-fitting folds."""
    if len(slates) != len(target_scores):
        raise ValueError("target_scores must have one array per slate")
    if not slates:
        raise ValueError("no logged slates to evaluate")
    _validate(slates=slates, target_scores=target_scores)
    batch = _flatten(slates=slates, target_scores=target_scores, policy=policy)
    count = len(slates)
    per_slate = np.bincount(batch.slate_of_slot, weights=batch.rewards, minlength=count)
    ips_terms = np.bincount(batch.slate_of_slot, weights=batch.weights * batch.rewards, minlength=count)
    dr_terms = _doubly_robust_terms(slates=slates, batch=batch, rng=rng)
    weights_squared = float((batch.weights**2).sum())
    slots_per_slate = len(batch.weights) / count
    ess = float(batch.weights.sum()) ** 2 / weights_squared / slots_per_slate if weights_squared > 0 else 0.0
    return PolicyEstimate(
        slates=count,
        impressions=len(batch.weights),
        logged_value=float(per_slate.mean()),
        ips=_mean_estimate(ips_terms),
        snips=_self_normalized(batch=batch, count=count),
        dr=_mean_estimate(dr_terms),
        effective_sample_size=ess,
    )


def _validate(*, slates: Sequence[LoggedSlate], target_scores: Sequence[np.ndarray]) -> None:
    """A malformed logged slate is refused with its index, before any work."""
    for index, (slate, scores) in enumerate(zip(slates, target_scores, strict=True)):
        rows = len(slate.pool_features)
        shown = np.asarray(slate.shown)
        if len(shown) == 0:
            raise ValueError(f"slate {index}: nothing shown")
        if not len(shown) == len(slate.propensities) == len(slate.rewards):
            raise ValueError(f"slate {index}: shown, propensities and rewards differ in length")
        if len(scores) != rows:
            raise ValueError(f"slate {index}: target_scores need one score per pool row")
        if shown.min() < 0 or shown.max() >= rows or len(np.unique(shown)) != len(shown):
            raise ValueError(f"slate {index}: shown must be distinct pool rows")
        if (np.asarray(slate.propensities, dtype=np.float64) <= 0).any():
            raise ValueError(f"slate {index}: a logged propensity is not positive")


def _flatten(
    *, slates: Sequence[LoggedSlate], target_scores: Sequence[np.ndarray], policy: ExplorationPolicy
) -> _Batch:
    """One computation of the candidate's marginals per slot count (slates of the same k go in one batch)."""
    candidate: list[np.ndarray] = [np.zeros(0)] * len(slates)
    by_slots: dict[int, list[int]] = {}
    for index, slate in enumerate(slates):
        by_slots.setdefault(len(slate.shown), []).append(index)
    for slots, indices in by_slots.items():
        scores = [np.asarray(target_scores[index], dtype=np.float64) for index in indices]
        for index, marginals in zip(indices, slot_marginals_batch(scores=scores, k=slots, policy=policy), strict=True):
            candidate[index] = marginals
    slate_of_slot, slot, weights, rewards, features = [], [], [], [], []
    for index, slate in enumerate(slates):
        shown = np.asarray(slate.shown, dtype=np.int64)
        positions = np.arange(len(shown))
        propensities = np.asarray(slate.propensities, dtype=np.float64)
        slate_of_slot.append(np.full(len(shown), index))
        slot.append(positions)
        weights.append(candidate[index][shown, positions] / propensities)
        rewards.append(np.asarray(slate.rewards, dtype=np.float64))
        features.append(np.asarray(slate.pool_features, dtype=np.float64)[shown])
    return _Batch(
        slate_of_slot=np.concatenate(slate_of_slot),
        slot=np.concatenate(slot),
        weights=np.concatenate(weights),
        rewards=np.concatenate(rewards),
        shown_features=np.concatenate(features),
        candidate_marginals=candidate,
    )


def _mean_estimate(terms: np.ndarray) -> Estimate:
    """The mean of per-slate terms with its CLT interval."""
    return _interval(value=float(terms.mean()), terms=terms)


def _self_normalized(*, batch: _Batch, count: int) -> Estimate:
    """Per slot sum(w r) / sum(w) over the slates that have the slot, times their share of the slates (a slate of
    fewer slots has no reward there), summed over slots; each slate's influence (the delta method) gives the
    interval, its slots being one cluster."""
    slots = int(batch.slot.max()) + 1
    cell = batch.slate_of_slot * slots + batch.slot
    weighted = np.bincount(cell, weights=batch.weights * batch.rewards, minlength=count * slots).reshape(count, slots)
    weight = np.bincount(cell, weights=batch.weights, minlength=count * slots).reshape(count, slots)
    present = np.bincount(cell, minlength=count * slots).reshape(count, slots).astype(np.float64)
    mean_weight, share = weight.mean(axis=0), present.mean(axis=0)
    usable = mean_weight > 0  # a slot where the candidate never shows what was logged contributes nothing known
    divisor = np.where(usable, mean_weight, 1.0)
    ratio = np.where(usable, weighted.mean(axis=0) / divisor, 0.0)
    value = float((ratio * share).sum())
    influence = (((weighted - ratio * weight) * share / divisor + ratio * (present - share))[:, usable]).sum(axis=1)
    return _interval(value=value, terms=influence)


def _interval(*, value: float, terms: np.ndarray) -> Estimate:
    """value +- 1.96 standard errors of the mean of per-slate terms (the CLT over slates)."""
    half = Z_95 * float(terms.std(ddof=1)) / float(np.sqrt(len(terms))) if len(terms) > 1 else float("inf")
    return Estimate(value=value, low=value - half, high=value + half)


def _doubly_robust_terms(*, slates: Sequence[LoggedSlate], batch: _Batch, rng: np.random.Generator) -> np.ndarray:
    """Per slate: the model's value of the candidate's slate plus the weighted residuals of the shown slots."""
    count = len(slates)
    slots = int(batch.slot.max()) + 1
    folds = rng.permutation(count) % FOLDS if count >= 2 * FOLDS else np.zeros(count, dtype=np.int64)
    fold_of_slot = folds[batch.slate_of_slot]
    # every pool row of every slate, with the candidate's marginals padded to `slots` columns
    pool_features = np.concatenate([np.asarray(slate.pool_features, dtype=np.float64) for slate in slates])
    slate_of_row = np.repeat(np.arange(count), [len(slate.pool_features) for slate in slates])
    marginals = np.zeros((len(pool_features), slots))
    at = 0
    for candidate in batch.candidate_marginals:
        marginals[at : at + len(candidate), : candidate.shape[1]] = candidate
        at += len(candidate)
    binary = bool(np.isin(batch.rewards, (0.0, 1.0)).all())
    terms = np.zeros(count)
    single = len(np.unique(folds)) == 1
    for fold in np.unique(folds):
        train = np.ones(len(fold_of_slot), dtype=bool) if single else fold_of_slot != fold
        model = _reward_model_fit(
            features=batch.shown_features[train],
            slot=batch.slot[train],
            rewards=batch.rewards[train],
            slots=slots,
            binary=binary,
        )
        held = np.flatnonzero(fold_of_slot == fold)
        predicted_shown = model.predict(features=batch.shown_features[held], slot=batch.slot[held])
        residual = batch.weights[held] * (batch.rewards[held] - predicted_shown)
        terms += np.bincount(batch.slate_of_slot[held], weights=residual, minlength=count)
        rows = np.flatnonzero(folds[slate_of_row] == fold)
        direct = (marginals[rows] * model.predict_grid(features=pool_features[rows], slots=slots)).sum(axis=1)
        terms += np.bincount(slate_of_row[rows], weights=direct, minlength=count)
    return terms


@dataclass(frozen=True)
class _RewardModel:
    """reward = link(features . coefficients + slot offset): a position-based model (logistic for clicks)."""

    mean: np.ndarray
    scale: np.ndarray
    coefficients: np.ndarray  # (F,)
    slot_offsets: np.ndarray  # (slots,)
    binary: bool

    def _link(self, linear: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-linear)) if self.binary else linear

    def predict(self, *, features: np.ndarray, slot: np.ndarray) -> np.ndarray:
        linear = np.nan_to_num((features - self.mean) / self.scale) @ self.coefficients + self.slot_offsets[slot]
        return self._link(linear)

    def predict_grid(self, *, features: np.ndarray, slots: int) -> np.ndarray:
        """(N, slots): every pool row at every slot."""
        row = np.nan_to_num((features - self.mean) / self.scale) @ self.coefficients
        return self._link(row[:, None] + self.slot_offsets[None, :slots])


def _column_moments(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each column's mean and standard deviation over its known (non-NaN) values; a column never known (a feature
    the log never had) or constant gets mean 0 and scale 1, so it standardizes to zeros."""
    known = ~np.isnan(features)
    counts = known.sum(axis=0)
    filled = np.where(known, features, 0.0)
    mean = np.divide(filled.sum(axis=0), counts, out=np.zeros(features.shape[1]), where=counts > 0)
    spread = np.where(known, features - mean, 0.0)
    variance = np.divide((spread**2).sum(axis=0), counts, out=np.zeros(features.shape[1]), where=counts > 0)
    scale = np.sqrt(variance)
    return mean, np.where(scale > 0, scale, 1.0)


def _reward_model_fit(
    *, features: np.ndarray, slot: np.ndarray, rewards: np.ndarray, slots: int, binary: bool
) -> _RewardModel:
    """Ridge-penalized logistic (Newton) or least-squares fit on standardized features plus one-hot slots."""
    mean, scale = _column_moments(features)
    standardized = np.nan_to_num((features - mean) / scale)
    design = np.hstack([standardized, np.eye(slots)[slot]])
    penalty = np.full(design.shape[1], RIDGE)
    penalty[standardized.shape[1] :] = 1e-6  # the slot offsets play the intercept's part: barely penalized
    if binary:
        beta = np.zeros(design.shape[1])
        base = np.clip(rewards.mean(), 1e-6, 1 - 1e-6) if len(rewards) else 0.5
        beta[standardized.shape[1] :] = np.log(base / (1 - base))
        for _ in range(NEWTON_ITERATIONS):
            probability = 1.0 / (1.0 + np.exp(-(design @ beta)))
            gradient = design.T @ (probability - rewards) + penalty * beta
            hessian = (design * (probability * (1 - probability))[:, None]).T @ design + np.diag(penalty)
            step = np.linalg.solve(hessian, gradient)
            beta -= step
            if np.abs(step).max() < 1e-8:
                break
    else:
        beta = np.linalg.solve(design.T @ design + np.diag(penalty), design.T @ rewards)
    return _RewardModel(
        mean=mean,
        scale=scale,
        coefficients=beta[: standardized.shape[1]],
        slot_offsets=beta[standardized.shape[1] :],
        binary=binary,
    )
