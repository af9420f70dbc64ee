"""Off-policy evaluation of a candidate ranking on a placement's log (control plane): what a registered ranker
version, or `popularity`, would have earned on the slates the serving ranker drew, before it gets any traffic.

The log (`graph_app.state.ranker_log`) holds, per ranker slate, the pool the logging policy drew from (items,
feature rows, the serving ranker's scores), the policy, and the evaluable slots with their propensities and
rewards. The candidate scores each pool (a ranker version from its stored artifact through the registry's loader,
on the logged feature rows; `popularity` by the items' 7-day popularity), and `scoring_app.off_policy` estimates its
value per slate (IPS, self-normalized IPS, doubly robust, with intervals and the effective sample size) as if it
were served with the same exploration policy. The candidate is evaluated as a re-ranker of the logged pools: items
outside them have no logged propensity.

`manage.py evaluate_policy` and the console's page call `policy_evaluate_logged`. The ranker's training may also
gate its automatic promotion on it (`ranker_off_policy_gate`, off unless SCORE_RANKER_OPE_GATE_PLACEMENT names a
placement).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
from django.conf import settings
from django.utils import timezone

from graph_app.interface import model_artifact, model_versions_of_kind
from graph_app.state.interface import REWARD_EVENT_TYPES, RankerSlateLogged, ranker_slates_logged
from scoring_app.engine import registry
from scoring_app.engine.ranking import RANKER, LoadedRanker
from scoring_app.engine.ranking_exploration import ExplorationPolicy
from scoring_app.off_policy import LoggedSlate, PolicyEstimate, policy_evaluate

POPULARITY = "popularity"
POPULARITY_FEATURE = "item_popularity_7d"
DEFAULT_DAYS = 14
DEFAULT_MAX_SLATES = 20_000
# The versions a candidate may be chosen among (the registry prunes retired ones beyond a few).
CANDIDATE_VERSIONS_LISTED = 200
# Slates whose pools a ranker scores per call (memory: about 30 rows x features x 8 bytes each).
PREDICT_BATCH_SLATES = 2000
# Below this many effective slates (or this share of the slates read) the weights are degenerate: the candidate
# ranks far from what the log explored, and the normal intervals are not to be trusted.
MIN_EFFECTIVE_SLATES = 100
MIN_EFFECTIVE_SHARE = 0.01


class PolicyEvaluationError(ValueError):
    """A bad argument, named (`field`), with what is wrong with it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class PolicyEvaluationReport:
    placement: str
    candidate: str
    reward: str
    since: datetime
    until: datetime
    # The slates evaluated, and those read but left out (logged under another exploration policy or feature set
    # than the most recent slate's, or with no evaluable slot).
    slates_skipped: int
    logging_versions: dict[str, int]  # serving ranker version -> slates it logged
    policy: ExplorationPolicy
    estimate: PolicyEstimate
    warnings: list[str]


def candidate_versions() -> list[str]:
    """The ranker versions a candidate may be (newest first), and `popularity`."""
    return [POPULARITY, *(v.version for v in model_versions_of_kind(kind=RANKER, limit=CANDIDATE_VERSIONS_LISTED))]


def policy_evaluate_logged(
    *,
    placement: str,
    candidate: str,
    days: int = DEFAULT_DAYS,
    max_slates: int = DEFAULT_MAX_SLATES,
    reward: str = "click",
    now: datetime | None = None,
    seed: int = 0,
) -> PolicyEvaluationReport:
    """The candidate's estimated value per slate on the placement's `max_slates` most recent logged ranker slates
    of the last `days` days. Raises PolicyEvaluationError naming the bad argument."""
    if days <= 0:
        raise PolicyEvaluationError("days", "must be a positive number of days")
    if max_slates <= 0:
        raise PolicyEvaluationError("max_slates", "must be a positive number of slates")
    if reward not in REWARD_EVENT_TYPES:
        raise PolicyEvaluationError("reward", f"must be one of {', '.join(sorted(REWARD_EVENT_TYPES))}")
    scorer = _candidate_scorer(candidate)
    until = now or timezone.now()
    since = until - timedelta(days=days)
    logged = ranker_slates_logged(placement=placement, since=since, until=until, max_slates=max_slates, reward=reward)
    if not logged:
        raise PolicyEvaluationError(
            "placement", f"no logged ranker slates for placement {placement!r} in the last {days} days"
        )
    slates = _comparable(logged)
    scorer.check(slates[0].feature_names)
    policy = ExplorationPolicy(
        share=float(slates[0].policy["share"]),
        temperature=float(slates[0].policy["temperature"]),
        # Every logged row is in the pool: the logging policy's marginals were computed over exactly these rows.
        pool=max(len(slate.item_ids) for slate in slates),
    )
    estimate = policy_evaluate(
        slates=[
            LoggedSlate(
                pool_features=slate.pool_features, logging_scores=slate.logging_scores, shown=slate.shown,
                propensities=slate.propensities, rewards=slate.rewards,
            )
            for slate in slates
        ],
        target_scores=scorer.scores(slates),
        policy=policy,
        rng=np.random.default_rng(seed),
    )  # fmt: skip
    return PolicyEvaluationReport(
        placement=placement,
        candidate=candidate,
        reward=reward,
        since=since,
        until=until,
        slates_skipped=len(logged) - len(slates),
        logging_versions=dict(Counter(slate.model_version for slate in slates)),
        policy=policy,
        estimate=estimate,
        warnings=_warnings(estimate, policy),
    )


def _comparable(logged: list[RankerSlateLogged]) -> list[RankerSlateLogged]:
    """The slates logged under the most recent slate's exploration policy and feature set (one policy evaluates
    them all; a feature store's change of columns would mislead the candidate)."""
    latest = logged[0]
    key = (latest.feature_names, latest.policy.get("share"), latest.policy.get("temperature"))
    return [
        slate
        for slate in logged
        if (slate.feature_names, slate.policy.get("share"), slate.policy.get("temperature")) == key
    ]


def _warnings(estimate: PolicyEstimate, policy: ExplorationPolicy) -> list[str]:
    warnings = []
    if policy.share <= 0:
        warnings.append(
            "The log was served without exploration (SCORE_RANKER_EXPLORATION_SHARE 0): only a candidate that ranks "
            "exactly as the serving ranker has support; other estimates are meaningless."
        )
    ess = estimate.effective_sample_size
    if ess < MIN_EFFECTIVE_SLATES or ess < MIN_EFFECTIVE_SHARE * estimate.slates:
        warnings.append(
            f"Small effective sample size ({ess:.1f} of {estimate.slates} slates): the candidate ranks far from what "
            "the log explored; the estimates and their intervals are unreliable."
        )
    return warnings


class _Scorer:
    """How a candidate scores the logged pools."""

    def check(self, feature_names: tuple[str, ...]) -> None:
        raise NotImplementedError

    def scores(self, slates: Sequence[RankerSlateLogged]) -> list[np.ndarray]:
        raise NotImplementedError


class _PopularityScorer(_Scorer):
    """No personalization: the pool ranked by the items' 7-day popularity (missing: none)."""

    column = -1

    def check(self, feature_names: tuple[str, ...]) -> None:
        if POPULARITY_FEATURE not in feature_names:
            raise PolicyEvaluationError("candidate", f"the logged rows lack the feature {POPULARITY_FEATURE}")
        self.column = feature_names.index(POPULARITY_FEATURE)

    def scores(self, slates: Sequence[RankerSlateLogged]) -> list[np.ndarray]:
        return [np.nan_to_num(slate.pool_features[:, self.column], nan=0.0) for slate in slates]


class _RankerScorer(_Scorer):
    """A registered ranker version, loaded as serving loads it, scoring the logged feature rows (a slate it served
    itself keeps the scores it logged: the same numbers, without the rows' float32 rounding)."""

    def __init__(self, version: str, ranker: LoadedRanker) -> None:
        self.version = version
        self.ranker = ranker
        self.columns = np.zeros(0, dtype=np.int64)

    def check(self, feature_names: tuple[str, ...]) -> None:
        missing = [name for name in self.ranker.feature_names if name not in feature_names]
        if missing:
            raise PolicyEvaluationError(
                "candidate", f"ranker {self.version} needs features the logged rows lack: {', '.join(missing)}"
            )
        self.columns = np.array([feature_names.index(name) for name in self.ranker.feature_names], dtype=np.int64)

    def scores(self, slates: Sequence[RankerSlateLogged]) -> list[np.ndarray]:
        scored: list[np.ndarray] = [slate.logging_scores for slate in slates]
        others = [index for index, slate in enumerate(slates) if slate.model_version != self.version]
        for start in range(0, len(others), PREDICT_BATCH_SLATES):
            batch = others[start : start + PREDICT_BATCH_SLATES]
            inputs = np.vstack([slates[index].pool_features[:, self.columns] for index in batch])
            predicted = self._predict(np.ascontiguousarray(inputs))
            bounds = np.cumsum([0, *(len(slates[index].item_ids) for index in batch)])
            for at, index in enumerate(batch):
                scored[index] = predicted[bounds[at] : bounds[at + 1]]
        return scored

    def _predict(self, inputs: np.ndarray) -> np.ndarray:
        if self.ranker.compiled is not None:
            return np.asarray(self.ranker.compiled.predict(inputs, n_jobs=1), dtype=np.float64)
        return np.asarray(self.ranker.booster.predict(inputs, num_threads=1), dtype=np.float64)


def _candidate_scorer(candidate: str) -> _Scorer:
    if candidate == POPULARITY:
        return _PopularityScorer()
    if not candidate or candidate not in candidate_versions():
        raise PolicyEvaluationError("candidate", f"{candidate!r} is neither a ranker version nor {POPULARITY!r}")
    return _RankerScorer(candidate, registry.model_load(RANKER, model_artifact(version=candidate)))


@dataclass(frozen=True)
class OffPolicyGate:
    """Whether a newly trained ranker may be promoted automatically on off-policy evidence, and why."""

    placement: str
    passed: bool
    reason: str
    slates: int = 0
    candidate_dr: tuple[float, float, float] | None = None  # value, low, high per slate
    logged_value: float | None = None  # what the serving policy earned on the same slates

    def figures(self) -> dict[str, object]:
        return {
            "placement": self.placement, "passed": self.passed, "reason": self.reason, "slates": self.slates,
            "dr": None if self.candidate_dr is None else [round(value, 6) for value in self.candidate_dr],
            "logged_value": None if self.logged_value is None else round(self.logged_value, 6),
        }  # fmt: skip


def ranker_off_policy_gate(*, version: str, placement: str | None = None) -> OffPolicyGate:
    """The off-policy gate of a ranker's automatic promotion, on SCORE_RANKER_OPE_GATE_PLACEMENT's log: it fails
    when the candidate is significantly worse than what serves (its DR interval wholly below the logged value). A
    tie passes: a gate that asked for a significant gain would stop nearly every retraining of a ranker that
    serves well. Without logged slates to judge on, it passes. An administrator's promotion in the console is not
    gated (it is the "forced" one)."""
    placement = placement if placement is not None else settings.SCORE_RANKER_OPE_GATE_PLACEMENT
    try:
        report = policy_evaluate_logged(placement=placement, candidate=version)
    except PolicyEvaluationError as error:
        return OffPolicyGate(placement=placement, passed=True, reason=f"not evaluated: {error.message}")
    dr, logged = report.estimate.dr, report.estimate.logged_value
    passed = bool(dr.high >= logged)
    reason = "not worse than the serving policy" if passed else "significantly worse than the serving policy"
    return OffPolicyGate(
        placement=placement, passed=passed, reason=reason, slates=report.estimate.slates,
        candidate_dr=(dr.value, dr.low, dr.high), logged_value=logged,
    )  # fmt: skip
