"""Ranking on the hot path: the active (or canary) LightGBM model scores the candidates' feature matrix.

The model's own feature list decides the columns it gets, so a model trained before a feature was added keeps
working; a feature it needs that the store no longer has is passed as missing (NaN), which LightGBM handles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from graph_app.features.definitions import FEATURE_INDEX
from graph_app.features.online import FeatureMatrix
from scoring_app.engine import registry

RANKER = "ranker"
# The user x item features: when they are all missing the ranker knows nothing about this user.
USER_FEATURES = (
    "user_category_frequency",
    "user_item_entity_affinity",
    "user_item_similarity",
)


@dataclass(frozen=True)
class LoadedRanker:
    booster: Any  # lightgbm.Booster
    feature_names: tuple[str, ...]
    columns: np.ndarray  # index into the feature store's columns, -1 where the store lacks the feature


def ranker_load(artifact: bytes) -> LoadedRanker:
    import lightgbm

    booster = lightgbm.Booster(model_str=artifact.decode())
    names = tuple(str(name) for name in booster.feature_name())
    columns = np.array([FEATURE_INDEX.get(name, -1) for name in names], dtype=np.int64)
    return LoadedRanker(booster, names, columns)


registry.register_loader(RANKER, ranker_load)


def ranker_inputs(ranker: LoadedRanker, features: FeatureMatrix) -> np.ndarray:
    inputs = features.values[:, np.maximum(ranker.columns, 0)]
    if (ranker.columns < 0).any():
        inputs[:, ranker.columns < 0] = np.nan
    return np.ascontiguousarray(inputs)


def ranker_scores(ranker: LoadedRanker, features: FeatureMatrix) -> np.ndarray:
    if not features.item_ids:
        return np.zeros(0)
    scores = ranker.booster.predict(ranker_inputs(ranker, features), num_threads=1)
    return np.asarray(scores, dtype=np.float64)


def ranking_confidence(features: FeatureMatrix, top_rows: np.ndarray) -> float:
    """How much the ranker knew about the user for the items it put on top: the share of those rows whose
    user x item features are present and non-zero (0 for a new user, 1 for a user with rich, recent history)."""
    if not len(top_rows):
        return 0.0
    columns = np.array([FEATURE_INDEX[name] for name in USER_FEATURES], dtype=np.int64)
    block = features.values[np.ix_(top_rows, columns)]
    known = np.isfinite(block) & (block != 0)
    return round(float(known.any(axis=1).mean()), 4)
