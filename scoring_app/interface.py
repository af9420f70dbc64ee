"""What other apps may use of Score (Sentry's cross-app service idea): keyword-only functions and plain data.
Training is imported when called: it loads LightGBM, which serving processes load only with a model.

- Training: the ranker (`ranker_train`) and the whole chain of scheduled trainings in order (`training_chain_run`).
- Checks: retrieval's online/offline skew (`retrieval_skew_check`).

Surface's serving still calls Score's engine (`scoring_app.engine`) directly while the hot path's item types are
being reworked.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from scoring_app.skew import RetrievalSkewReport, retrieval_skew_check
from scoring_app.training_chain import TRAINING_TASKS, TaskRun, training_chain_run

if TYPE_CHECKING:
    from scoring_app.training import RankerTrainingReport


def ranker_train(*, now: datetime | None = None, search: bool | None = None) -> RankerTrainingReport:
    """Train a ranker; it serves only if its holdout nDCG@10 is not worse than the active model's."""
    from scoring_app.training import ranker_train as train

    return train(now=now, search=search)


__all__ = [
    "TRAINING_TASKS",
    "RetrievalSkewReport",
    "TaskRun",
    "ranker_train",
    "retrieval_skew_check",
    "training_chain_run",
]
