"""What other apps may use of Score (Sentry's cross-app service idea): keyword-only functions and plain data.
Re-exports of the modules that implement them.

- Training: the ranker (`ranker_train`) and the whole chain of scheduled trainings in order (`training_chain_run`).
- Checks: retrieval's online/offline skew (`retrieval_skew_check`).

Surface's serving still calls Score's engine (`scoring_app.engine`) directly while the hot path's item types are
being reworked.
"""

from __future__ import annotations

from scoring_app.skew import RetrievalSkewReport, retrieval_skew_check
from scoring_app.training import RankerTrainingReport, ranker_train
from scoring_app.training_chain import TRAINING_TASKS, TaskRun, training_chain_run

__all__ = [
    "TRAINING_TASKS",
    "RankerTrainingReport",
    "RetrievalSkewReport",
    "TaskRun",
    "ranker_train",
    "retrieval_skew_check",
    "training_chain_run",
]
