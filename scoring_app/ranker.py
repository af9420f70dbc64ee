"""The LightGBM ranker's core: one set of hyperparameters, one fit, one set of ranking metrics.

Both the scheduled retrain (`scoring_app.training`) and the offline evaluation (`evaluate_movielens`) fit through
here, so what is measured offline is what serves. Rows are grouped into queries (one served slate, or one user's
interaction with sampled negatives); labels are graded relevance (0 ignored, 1 clicked, 2 added, 3 bought).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Small, shallow forests: 100 trees of 31 leaves predict 500 candidates in about 1 ms on one thread
# (shared/docs/performance-notes.md), well inside the Score layer's 20 ms ranking budget.
LIGHTGBM_PARAMS: dict[str, object] = {
    "objective": "lambdarank",
    "metric": "ndcg",
    "eval_at": [10],
    "learning_rate": 0.1,
    "num_leaves": 31,
    "min_data_in_leaf": 20,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.9,
    "bagging_freq": 1,
    "lambdarank_truncation_level": 20,
    "num_threads": 1,
    "seed": 42,
    "deterministic": True,
    "force_row_wise": True,
    "verbosity": -1,
}
NUM_BOOST_ROUND = 100
EARLY_STOPPING_ROUNDS = 20
# Early stopping on fewer validation queries than this follows noise (it stopped at 4 trees on 24 queries).
EARLY_STOPPING_MIN_QUERIES = 200


@dataclass(frozen=True)
class RankingData:
    """Rows sorted by query; `group_sizes` are the consecutive query lengths."""

    values: np.ndarray  # rows x features, NaN where missing
    labels: np.ndarray  # graded relevance, int
    group_sizes: np.ndarray  # int, sums to len(values)

    def __post_init__(self) -> None:
        if int(self.group_sizes.sum()) != len(self.values) or len(self.labels) != len(self.values):
            raise ValueError("group sizes, labels and rows disagree")


def ranker_fit(
    *,
    train: RankingData,
    feature_names: list[str],
    valid: RankingData | None = None,
    params: dict[str, object] | None = None,
    num_boost_round: int = NUM_BOOST_ROUND,
):  # -> lightgbm.Booster
    """Fit a lambdarank booster; with a large enough `valid`, stop early on its nDCG@10 (never pass the test split
    here)."""
    import lightgbm

    merged = {**LIGHTGBM_PARAMS, **(params or {})}
    dataset = lightgbm.Dataset(
        train.values, label=train.labels, group=train.group_sizes, feature_name=feature_names, free_raw_data=True
    )
    callbacks = []
    valid_sets = []
    if valid is not None and len(valid.group_sizes) >= EARLY_STOPPING_MIN_QUERIES:
        valid_sets = [lightgbm.Dataset(valid.values, label=valid.labels, group=valid.group_sizes, reference=dataset)]
        callbacks.append(lightgbm.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False))
    return lightgbm.train(merged, dataset, num_boost_round=num_boost_round, valid_sets=valid_sets, callbacks=callbacks)


def ranking_metrics(*, scores: np.ndarray, data: RankingData) -> dict[str, float]:
    """Mean nDCG@10 (graded gains 2^label - 1) and recall@20 (share of relevant rows in the top 20) over the
    queries that have at least one relevant row."""
    ndcgs: list[float] = []
    recalls: list[float] = []
    start = 0
    for size in data.group_sizes.tolist():
        labels = data.labels[start : start + size]
        # Ties rank the relevant rows last: a model that cannot tell them apart gets no credit.
        order = np.lexsort((labels, -scores[start : start + size]))
        start += size
        relevant = int((labels > 0).sum())
        if not relevant:
            continue
        gains = (2.0 ** labels[order] - 1.0)[:10]
        ideal = (2.0 ** np.sort(labels)[::-1] - 1.0)[:10]
        discounts = 1.0 / np.log2(np.arange(2, 12))
        ideal_dcg = float((ideal * discounts[: len(ideal)]).sum())
        ndcgs.append(float((gains * discounts[: len(gains)]).sum()) / ideal_dcg if ideal_dcg else 0.0)
        recalls.append(float((labels[order][:20] > 0).sum()) / relevant)
    if not ndcgs:
        return {"ndcg@10": math.nan, "recall@20": math.nan, "queries": 0}
    return {"ndcg@10": float(np.mean(ndcgs)), "recall@20": float(np.mean(recalls)), "queries": len(ndcgs)}
