"""Ranking on the hot path: the active (or canary) LightGBM model scores the candidates' feature matrix.

The model's own feature list decides the columns it gets, so a model trained before a feature was added keeps
working; a feature it needs that the store no longer has is passed as missing (NaN), which LightGBM handles.

Serving compiles each model to machine code with lleaves (LLVM) when it loads it, in the registry's background
loader: 300 candidates score six to eight times faster than with LightGBM on one thread, about 2 ms less a request
here (BENCHMARKS.md, "ranker compiled by lleaves or not"), with the same numbers (to about 1e-15). The LightGBM
booster stays loaded for explanations (pred_contrib) and as the fallback when compiling is switched off
(SCORE_RANKER_COMPILE=0), fails, or lleaves is not installed (Python 3.13: requirements.txt).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings

from graph_app.interface import FEATURE_INDEX, FeatureMatrix
from scoring_app.engine import registry

logger = logging.getLogger(__name__)

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
    compiled: Any = None  # lleaves.Model, when the model was compiled


def _compiled(artifact: bytes) -> Any:
    """The model compiled by lleaves, cached on disk by the artifact's hash so that the other processes of this
    machine (and restarts) load the object code instead of compiling again. None when it cannot be compiled."""
    if not settings.SCORE_RANKER_COMPILE:
        return None
    try:
        import lleaves
    except ImportError:  # not installed on this Python (requirements.txt): LightGBM scores it
        return None
    try:
        folder = Path(settings.DATA_DIR) / "compiled-models"
        folder.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(artifact).hexdigest()[:32]
        cached = folder / f"ranker-{digest}.o"
        with tempfile.NamedTemporaryFile("wb", dir=folder, suffix=".txt", delete=False) as model_file:
            model_file.write(artifact)
        try:
            model = lleaves.Model(model_file=model_file.name)
            if cached.exists():
                model.compile(cache=str(cached))
            else:
                # Written under a name of this process's own, then renamed: another process never reads half a file.
                partial = folder / f"ranker-{digest}.{os.getpid()}.partial"
                model.compile(cache=str(partial))
                os.replace(partial, cached)
        finally:
            os.unlink(model_file.name)
        return model
    except Exception:  # no LLVM here, or a model lleaves cannot compile: LightGBM scores it
        logger.exception("score.ranker_compile_failed")
        return None


def ranker_compile_ahead(artifact: bytes) -> bool:
    """Compile a model into this machine's cache before it is published (the training calls this): serving
    processes then load its object code instead of each compiling it on its first requests, which delayed the
    requests of the second a new ranker was published by up to 2 s. Whether it is compiled."""
    return _compiled(artifact) is not None


def ranker_load(artifact: bytes) -> LoadedRanker:
    import lightgbm

    booster = lightgbm.Booster(model_str=artifact.decode())
    names = tuple(str(name) for name in booster.feature_name())
    columns = np.array([FEATURE_INDEX.get(name, -1) for name in names], dtype=np.int64)
    return LoadedRanker(booster, names, columns, _compiled(artifact))


registry.register_loader(RANKER, ranker_load)


def ranker_inputs(ranker: LoadedRanker, features: FeatureMatrix) -> np.ndarray:
    inputs = features.values[:, np.maximum(ranker.columns, 0)]
    if (ranker.columns < 0).any():
        inputs[:, ranker.columns < 0] = np.nan
    return np.ascontiguousarray(inputs)


def ranker_scores(ranker: LoadedRanker, features: FeatureMatrix) -> np.ndarray:
    if not features.item_ids:
        return np.zeros(0)
    inputs = ranker_inputs(ranker, features)
    if ranker.compiled is not None:
        scores = ranker.compiled.predict(inputs, n_jobs=1)
    else:
        scores = ranker.booster.predict(inputs, num_threads=1)
    return np.asarray(scores, dtype=np.float64)


# The user's own vector (ALS, trained on their whole history) found the item: the ranker knows the user even when
# their affinities (90 days) have expired. Missing from a feature store that has no retrieval features.
_LISTED_BY_USER_VECTOR = FEATURE_INDEX.get("retrieval_user_vector_score")


def ranking_confidence(features: FeatureMatrix, top_rows: np.ndarray) -> float:
    """How much the ranker knew about the user for the items it put on top: the share of those rows whose
    user x item features are present and non-zero, or that the user's own vector retrieved (0 for a new user, 1 for
    a user with rich history). Below SCORE_MIN_RANKER_CONFIDENCE the bandit explores a slot or two, no more."""
    if not len(top_rows):
        return 0.0
    columns = np.array([FEATURE_INDEX[name] for name in USER_FEATURES], dtype=np.int64)
    block = features.values[np.ix_(top_rows, columns)]
    known = (np.isfinite(block) & (block != 0)).any(axis=1)
    if _LISTED_BY_USER_VECTOR is not None:
        known |= np.isfinite(features.values[top_rows, _LISTED_BY_USER_VECTOR])
    return round(float(known.mean()), 4)
