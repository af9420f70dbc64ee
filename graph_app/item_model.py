"""An item-to-item model beside the embeddings: EASE (Steck, "Embarrassingly Shallow Autoencoders", 2019).

A closed-form regression of each item on the others over the binary user-item matrix X:
P = (XᵀX + λI)⁻¹, B = I - P diag(1/diag P) with a zero diagonal; a user's score for an item is the sum of B's
rows of the user's items. ALS alone swings with its confidence weight between what a shop's next purchases reward
and a user's static taste; beside this second model the ranker's choice holds on both (EVALUATION.md, "Why the gap
stays").

The inverse is dense: the model covers the ITEM_MODEL_MAX_ITEMS items most users interacted with (all of a small
catalog). Each embeddings training fits it on the same time-based holdout for a few λ, keeps the best if it beats
popularity there, refits on the whole log and publishes each user's best items (what they bought left out), read by
retrieval's "item_model" source. The ranker's training computes the same lists from the data its labels are hidden
from (`item_model_lists`), so the source's features mean the same online and offline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.conf import settings

from graph_app.progress import Progress
from graph_app.user_lists import ranked_lists_publish
from personalization import redis_keys
from personalization.redis_client import get_control_redis
from personalization.training_compute import training_threads_used

logger = logging.getLogger(__name__)

ITEM_MODEL_DEFAULT_LAMBDA = 500.0
# λ tried by each training's search, after the active model's and the default (first found, first tried).
ITEM_MODEL_LAMBDAS: tuple[float, ...] = (250.0, 1000.0, 2000.0)
# Each user's list: what retrieval takes (scoring_app.engine.retrieval ITEM_MODEL_NEIGHBOURS) and room for the
# recent items and what is out of stock when it is read.
ITEM_MODEL_PER_USER = 120
USER_BLOCK_ROWS = 2048
SCORE_DECIMALS = 5


@dataclass(frozen=True)
class ItemModel:
    """B over the covered items: `items` are catalog indexes (Interactions.item_ids), `weights` their B
    (len(items) x len(items), float32, row = the item a user has, column = the item scored)."""

    items: np.ndarray
    weights: np.ndarray
    regularization: float


def item_model_fit(interactions: Any, mask: np.ndarray | None, *, regularization: float) -> ItemModel:
    """EASE on the pairs in `mask` (all by default), binary, over the most interacted-with items
    (`training_threads_used`)."""
    user_items = interactions.matrix(mask)
    users_per_item = np.asarray(user_items.sum(axis=0)).ravel()
    order = np.lexsort((np.arange(len(users_per_item)), -users_per_item))
    covered = np.sort(order[users_per_item[order] > 0][: settings.ITEM_MODEL_MAX_ITEMS])
    if not len(covered):
        return ItemModel(covered, np.zeros((0, 0), dtype=np.float32), regularization)
    columns = user_items[:, covered]
    # float32 throughout: three items x items arrays at most (5,000 items: 100 MB each); λ keeps it well conditioned.
    gram = np.asarray((columns.T @ columns).toarray(), dtype=np.float32)
    gram[np.diag_indices_from(gram)] += regularization
    with training_threads_used():
        weights = np.linalg.inv(gram)
    del gram
    diagonal = np.diag(weights).copy()
    weights /= -diagonal
    weights[np.diag_indices_from(weights)] = 0.0
    return ItemModel(covered, weights, regularization)


def item_model_lists(
    model: ItemModel, user_items: Any, *, exclude: Any = None, k: int = ITEM_MODEL_PER_USER
) -> tuple[np.ndarray, np.ndarray]:
    """(catalog item indexes, scores) of each row's k best items, best first, -1 where fewer: `user_items` is the
    users x catalog CSR the scores sum over, `exclude` (same shape) what is left out. Only positive scores count.
    A sparse times dense product: a user's few items cost a few rows of B, not the whole matrix."""
    rows = user_items.shape[0]
    indexes = np.full((rows, k), -1, dtype=np.int64)
    scores = np.zeros((rows, k), dtype=np.float32)
    wanted = min(k, len(model.items))
    if not wanted or not rows:
        return indexes, scores
    covered = user_items[:, model.items].tocsr()
    covered.data[:] = 1.0
    excluded = exclude[:, model.items].tocsr() if exclude is not None else None
    progress = Progress("item_model: users' lists", total=rows)
    for start in range(0, rows, USER_BLOCK_ROWS):
        stop = min(start + USER_BLOCK_ROWS, rows)
        progress.advance(stop - start)
        block = np.asarray(covered[start:stop] @ model.weights, dtype=np.float32)
        if excluded is not None:
            part = excluded[start:stop].tocoo()
            block[part.row, part.col] = -np.inf
        # The k best of each row, best first (equal scores: the lower item first).
        best = np.argpartition(-block, wanted - 1, axis=1)[:, :wanted]
        best_scores = np.take_along_axis(block, best, axis=1)
        order = np.lexsort((best, -best_scores), axis=1)
        best = np.take_along_axis(best, order, axis=1)
        best_scores = np.take_along_axis(best_scores, order, axis=1)
        valid = best_scores > 0
        indexes[start:stop, :wanted] = np.where(valid, model.items[best], -1)
        scores[start:stop, :wanted] = np.where(valid, best_scores, 0.0)
    progress.finish()
    return indexes, scores


@dataclass(frozen=True)
class ItemModelSearch:
    """The λ chosen (None: the model did not beat popularity, and serves no lists) and the figures behind it."""

    regularization: float | None
    tried: list[dict[str, float]]
    gate: dict[str, object]


def item_model_search(
    interactions: Any, holdout: Any, *, active: float | None, search: bool, budget_seconds: float
) -> ItemModelSearch:
    """Fit each λ (the active and the default first) on the training part of the embeddings' holdout (without its
    taste fold), until the time budget is spent; keep the best by the mean of its future and taste nDCG@10 among
    those significantly better than the first on it, as the embeddings' search does. The model serves only if it
    beats popularity on the future of the same users."""
    from graph_app.training import TOP_K, holdout_popularity, holdout_scores, significantly_better

    started = time.monotonic()
    grid = list(dict.fromkeys([*([active] if active else []), ITEM_MODEL_DEFAULT_LAMBDA, *ITEM_MODEL_LAMBDAS]))
    if not search:
        grid = grid[:1]
    users = holdout.users
    seen = interactions.matrix(holdout.search_train)[users]
    popularity_ndcg = holdout_popularity(interactions, holdout) if len(users) else 0.0
    tried: list[dict[str, float]] = []
    first: np.ndarray | None = None
    best: tuple[float, Any] | None = None
    active_ndcg: float | None = None
    progress = Progress(f"item_model search ({budget_seconds:.0f} s budget): λ tried", total=len(grid), every_seconds=0)
    for regularization in grid:
        if tried and time.monotonic() - started > budget_seconds:
            break
        model = item_model_fit(interactions, holdout.search_train, regularization=regularization)
        found, _ = item_model_lists(model, seen, exclude=seen, k=TOP_K)
        progress.advance()
        scores = holdout_scores(interactions, holdout, found, popularity_ndcg)
        tried.append({"regularization": regularization, "ndcg@10": scores.ndcg, "taste_ndcg@10": scores.taste_ndcg})
        if regularization == active:
            active_ndcg = scores.ndcg
        if first is None:
            first, best = scores.per_user, (regularization, scores)
        elif (
            best is not None
            and scores.per_user.mean() > best[1].per_user.mean()
            and significantly_better(scores.per_user, first)
        ):
            best = (regularization, scores)
    assert best is not None
    ndcg = best[1].ndcg
    passed = bool(len(users)) and ndcg > popularity_ndcg
    gate: dict[str, object] = {
        "users": len(users),
        "ndcg@10": ndcg,
        "taste_ndcg@10": best[1].taste_ndcg,
        "popularity_ndcg@10": popularity_ndcg,
        "active_ndcg@10": active_ndcg,
        "passed": passed,
        "seconds": round(time.monotonic() - started, 2),
    }
    return ItemModelSearch(best[0] if passed else None, tried, gate)


def item_model_publish(
    *, model: ItemModel | None, interactions: Any, user_order: np.ndarray, exclude: Any = None
) -> int:
    """Compute and publish the lists of the first USER_NEAREST_LISTS_MAX_USERS users of `user_order` (rows of
    `interactions`, most active first), their bought items (`exclude`, users x catalog CSR in interactions' user
    order) left out; without a model the served lists are removed. Returns how many users have one."""
    chosen = user_order[: max(0, settings.USER_NEAREST_LISTS_MAX_USERS)] if model is not None else user_order[:0]
    indexes = np.full((0, ITEM_MODEL_PER_USER), -1, dtype=np.int64)
    scores = np.zeros((0, ITEM_MODEL_PER_USER), dtype=np.float32)
    if model is not None:
        exclude_chosen = exclude[chosen] if exclude is not None else None
        indexes, scores = item_model_lists(model, interactions.matrix()[chosen], exclude=exclude_chosen)
    return ranked_lists_publish(
        key=redis_keys.user_item_model_lists,
        user_ids=[interactions.user_ids[row] for row in chosen],
        item_ids=interactions.item_ids,
        indexes=indexes,
        scores=scores,
        decimals=SCORE_DECIMALS,
        name="item_model",
    )


def item_model_lists_forget(*, user_keys: Sequence[str]) -> int:
    """The users' published lists (erasure); how many were removed."""
    client = get_control_redis()
    pipeline = client.pipeline(transaction=False)
    for user_key in user_keys:
        pipeline.hdel(redis_keys.user_item_model_lists(redis_keys.partition_of(user_key)), user_key)
    return sum(int(removed) for removed in pipeline.execute())
