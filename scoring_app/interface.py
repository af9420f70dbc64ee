"""What other apps may use of Score (Sentry's cross-app service idea): keyword-only functions and plain data.
Re-exports of the modules that implement them.

- Training: the ranker (`ranker_train`) and the whole chain of scheduled trainings in order (`training_chain_run`).
- Checks: retrieval's online/offline skew (`retrieval_skew_check`).
- Off-policy evaluation: a candidate ranker version's (or popularity's) estimated value on a placement's logged
  ranker slates (`policy_evaluate_logged`, with the versions it may be: `candidate_versions`).

- Serving (the hot path, `scoring_app.engine`): the user's state in one round trip (`user_state_fetch`, which
  takes the caller's own reads as `StateReads`), the candidates of every retrieval source (`candidates_retrieve`),
  their scores by the ranker or the bandit (`slate_score`), the popular and similar items of the fallbacks, the
  serving models (`models_refresh`, `serving_model`; `models_preload`: the versions experiments serve) and the
  ranker's inputs for the console's explanations. Every item is a `personalization.candidates.Candidate`, filled
  in as it goes.
"""

from __future__ import annotations

from scoring_app.engine.bandit import BanditLog
from scoring_app.engine.ranking import RANKER, ranker_inputs
from scoring_app.engine.registry import models_preload, models_refresh, serving_model
from scoring_app.engine.retrieval import (
    CandidateSet,
    StateReads,
    UserState,
    candidates_retrieve,
    popular_fallback,
    retrieval_warm_up,
    similar_items,
    user_state_fetch,
)
from scoring_app.engine.scoring import CONTEXT_SOURCE, RankerPool, ScoreResult, slate_score
from scoring_app.policy_evaluation import (
    POPULARITY,
    PolicyEvaluationError,
    PolicyEvaluationReport,
    candidate_versions,
    policy_evaluate_logged,
)
from scoring_app.skew import RetrievalSkewReport, retrieval_skew_check
from scoring_app.training import RankerTrainingReport, ranker_train
from scoring_app.training_chain import TRAINING_TASKS, TaskRun, training_chain_run

__all__ = [
    "CONTEXT_SOURCE",
    "POPULARITY",
    "RANKER",
    "TRAINING_TASKS",
    "BanditLog",
    "CandidateSet",
    "PolicyEvaluationError",
    "PolicyEvaluationReport",
    "RankerPool",
    "RankerTrainingReport",
    "RetrievalSkewReport",
    "ScoreResult",
    "StateReads",
    "TaskRun",
    "UserState",
    "candidate_versions",
    "candidates_retrieve",
    "models_preload",
    "models_refresh",
    "policy_evaluate_logged",
    "popular_fallback",
    "ranker_inputs",
    "ranker_train",
    "retrieval_skew_check",
    "retrieval_warm_up",
    "serving_model",
    "similar_items",
    "slate_score",
    "training_chain_run",
    "user_state_fetch",
]
