"""The Score layer's answer for one request: retrieval's candidates ranked, with a confidence and the path taken.

- `ranker`: the active (or, for a canary's share of users, the canary) LightGBM model scores every candidate's
  feature-store row; its confidence is how much it knew about the user for the items it put on top.
- `bandit`: for new users and requests where features are missing or the ranker's confidence is low, the
  contextual bandit picks the slate and logs each item's propensity.
- `fallback`: neither model is available (or the feature store is down): retrieval's own order.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.conf import settings
from redis.exceptions import RedisError

from graph_app.features.online import FeatureMatrix, features_fetch
from scoring_app.engine import bandit, registry
from scoring_app.engine.ranking import RANKER, LoadedRanker, ranker_scores, ranking_confidence
from scoring_app.engine.retrieval import Candidate, CandidateSet, UserState

logger = logging.getLogger(__name__)

PATH_RANKER = "ranker"
PATH_BANDIT = "bandit"
PATH_FALLBACK = "fallback"


@dataclass(frozen=True)
class ScoredItem:
    item_id: str
    score: float
    source: str
    explanation: str
    sources: tuple[str, ...]
    propensity: float | None = None
    # The item's entity keys as the feature read found them ("category:x|brand:y"; None: not read), so that the
    # Surface's rules and caps need not read them again.
    entities: bytes | None = None


@dataclass(frozen=True)
class ScoreResult:
    items: list[ScoredItem]
    confidence: float
    path: str
    model_version: str | None
    degraded: list[str] = field(default_factory=list)
    # What the bandit learns from (its context, the offered actions, propensities), when it chose the slate.
    bandit_log: Any = None
    # "canary" when the model that chose the slate is this user's canary, else "control".
    variant: str = "control"


def _scored(
    candidate: Candidate, score: float, propensity: float | None = None, entities: bytes | None = None
) -> ScoredItem:
    return ScoredItem(
        candidate.item_id, round(float(score), 6), candidate.source, candidate.explanation,
        candidate.sources or (candidate.source,), propensity, entities,
    )  # fmt: skip


def _entities(features: FeatureMatrix, row: int | None) -> bytes | None:
    """The row's entity keys as read (b"": read, none), or None when the matrix did not read them."""
    if not features.entities or row is None:
        return None
    return features.entities[row] or b""


def _in_stock(features: FeatureMatrix, candidates: list[Candidate]) -> tuple[list[Candidate], FeatureMatrix]:
    """Drop what went out of stock since the candidate set was cached (unknown stock is kept)."""
    stock = features.column("item_in_stock")
    keep = np.flatnonzero(~(stock == 0.0))
    if len(keep) == len(candidates):
        return candidates, features
    return [candidates[index] for index in keep], features.rows(keep)


def _fallback(candidates: list[Candidate], k: int, model_version: str | None, degraded: list[str]) -> ScoreResult:
    chosen = candidates[:k]
    personalized = sum(1 for candidate in chosen if candidate.source not in ("popular", "fresh"))
    return ScoreResult(
        items=[_scored(candidate, candidate.score) for candidate in chosen],
        # The share of slots filled by the user's own signals: the Surface decides how much to trust the slate.
        confidence=round(personalized / k, 4) if k else 0.0,
        path=PATH_FALLBACK,
        model_version=model_version,
        degraded=degraded,
    )


def _ranked(
    ranker: registry.ServingModel, candidates: list[Candidate], features: FeatureMatrix, k: int
) -> tuple[list[ScoredItem], float, list[Candidate]]:
    """The top k by the ranker's score, its confidence, and the best candidates in ranked order (what the bandit is
    offered when the confidence is too low: it takes at most MAX_BANDIT_ACTIONS of the distinct candidates)."""
    loaded: LoadedRanker = ranker.model
    scores = ranker_scores(loaded, features)
    order = np.argsort(-scores, kind="stable")
    confidence = ranking_confidence(features, order[:k])
    return (
        [_scored(candidates[index], scores[index], entities=_entities(features, index)) for index in order[:k]],
        confidence,
        [candidates[index] for index in order[: bandit.MAX_BANDIT_ACTIONS]],
    )


def _reason(ranker: registry.ServingModel | None, items: list[ScoredItem], state: UserState) -> str:
    """Why the bandit decides this request (it learns each regime separately)."""
    if not state.recent_items and not state.favourite_categories:
        return "new_user"
    if ranker is None or not items:
        return "missing_features"
    return "low_confidence"


def slate_score(
    *,
    state: UserState,
    candidate_set: CandidateSet,
    placement: str,
    k: int,
    scorer: str = "auto",
    explore_slot: int | None = None,
) -> ScoreResult:
    """`scorer`: auto (ranker, bandit when unsure), ranker (never the bandit), bandit (never the ranker),
    retrieval (retrieval's order). `explore_slot`: where a new item explored by the bandit goes in a ranked list
    (default: the last of the k); the Surface asks for more than it shows and puts it on the shelf."""
    registry.models_observe(state.models_snapshot)
    degraded: list[str] = []
    candidates = candidate_set.candidates
    if not candidates:
        return ScoreResult([], 0.0, PATH_FALLBACK, state.model_version, degraded)
    if "user_state_unavailable" in state.degraded:
        return _fallback(candidates, k, state.model_version, degraded)
    try:
        features = features_fetch(
            user_key=state.user_key, item_ids=[c.item_id for c in candidates], placement=placement, now=time.time(),
            recent_items=state.recent_items[len(state.seeds) :], writes=candidate_set.unsaved,
        )  # fmt: skip
    except RedisError as error:
        logger.warning("score.features_unavailable", extra={"error": str(error)})
        return _fallback(candidates, k, state.model_version, ["features_unavailable"])
    candidates, features = _in_stock(features, candidates)

    if scorer == "retrieval":
        return _fallback(candidates, k, state.model_version, degraded)
    ranker = registry.serving_model(RANKER, user_key=state.user_key) if scorer != "bandit" else None
    items: list[ScoredItem] = []
    confidence = 0.0
    offered = candidates
    if ranker is not None:
        try:
            items, confidence, offered = _ranked(ranker, candidates, features, k)
        except Exception as error:  # a broken model must not break the shelf
            logger.exception("score.ranker_failed", extra={"version": ranker.version})
            degraded.append(f"ranker_failed:{type(error).__name__}")
            items = []
        if items and confidence >= settings.SCORE_MIN_RANKER_CONFIDENCE:
            slot = min(k, explore_slot + 1 if explore_slot is not None else k) - 1
            explored = _new_item_slot(state, items, candidates, features, placement, slot)
            if explored is not None:
                return ScoreResult(
                    explored[0], confidence, PATH_RANKER, ranker.version, degraded, explored[1], _variant(state)
                )
            return ScoreResult(items, confidence, PATH_RANKER, ranker.version, degraded, variant=_variant(state))

    bandit_result = (
        _bandit(state, offered, placement, k, _reason(ranker, items, state), features) if scorer != "ranker" else None
    )
    if bandit_result is not None:
        return ScoreResult(
            bandit_result.items, bandit_result.confidence, PATH_BANDIT, bandit_result.model_version,
            degraded + bandit_result.degraded, bandit_result.bandit_log,
        )  # fmt: skip
    if items and ranker is not None:
        return ScoreResult(items, confidence, PATH_RANKER, ranker.version, degraded, variant=_variant(state))
    if ranker is None and scorer != "bandit":
        degraded.append("ranker_unavailable")
    return _fallback(candidates, k, state.model_version, degraded)


_random = random.Random()


def _variant(state: UserState) -> str:
    return registry.serving_variant(RANKER, user_key=state.user_key)


# A new item (no popularity yet, created within this many days) cannot earn a ranker score: the bandit may give it
# the last slot of a ranked slate, so new items are explored (and their propensity logged) on every shelf.
NEW_ITEM_DAYS = 30.0
EXPLORATION_MIN_SLOTS = 4
# The new items offered for that slot: the first ones in retrieval order (each offered action costs features to
# build and a line in the impression log).
NEW_ITEMS_OFFERED = 10


def _new_item_slot(
    state: UserState,
    items: list[ScoredItem],
    candidates: list[Candidate],
    features: FeatureMatrix,
    placement: str,
    slot: int,
) -> tuple[list[ScoredItem], Any] | None:
    """The ranked list with the bandit's pick among new items at `slot`, or None."""
    if slot + 1 < EXPLORATION_MIN_SLOTS or len(items) <= slot:
        return None
    shown = {item.item_id for item in items}
    popularity = np.nan_to_num(features.column("item_popularity_7d"), nan=0.0)
    age = features.column("item_age_days")
    new = np.flatnonzero((popularity == 0.0) & (age <= NEW_ITEM_DAYS))  # NaN ages compare False, as before
    rows = [int(row) for row in new[: NEW_ITEMS_OFFERED + len(shown)] if candidates[row].item_id not in shown]
    rows = rows[:NEW_ITEMS_OFFERED]
    if not rows:
        return None
    explored = _bandit(state, [candidates[row] for row in rows], placement, 1, "new_items", features.rows(rows))
    if explored is None or not explored.items:
        return None
    return [*items[:slot], explored.items[0], *items[slot:-1]], explored.bandit_log


def _bandit(
    state: UserState, offered: list[Candidate], placement: str, k: int, reason: str, features: FeatureMatrix
) -> ScoreResult | None:
    """The contextual bandit's slate over the best candidates (`features`: rows of at least those items), or None
    when no bandit model serves. Its context comes from the feature reads the request already made."""
    serving = bandit.serving_bandit(user_key=state.user_key)
    if serving is None:
        return None
    try:
        context = bandit.bandit_context_from_features(
            placement=placement, now=time.time(), reason=reason, candidates=offered, features=features
        )
        actions = bandit.bandit_actions(context, offered)
        picks = bandit.bandit_choose(
            model=serving.model, context=context, candidates=offered, k=k, rng=_random, actions=actions
        )
    except Exception:
        logger.exception("score.bandit_failed", extra={"version": serving.version})
        return None
    by_id = {candidate.item_id: candidate for candidate in offered}
    # `features` may be in another order than `offered` (the ranker's): rows by item.
    picked = {pick.item_id for pick in picks}
    rows = {item_id: row for row, item_id in enumerate(features.item_ids) if item_id in picked}
    # In pick order: each later propensity assumes the earlier picks were taken.
    items = [
        _scored(by_id[pick.item_id], pick.propensity, pick.propensity, _entities(features, rows.get(pick.item_id)))
        for pick in picks
    ]
    return ScoreResult(
        items=items,
        # How sure the bandit was of its first pick.
        confidence=round(picks[0].propensity, 4) if picks else 0.0,
        path=PATH_BANDIT,
        model_version=serving.version,
        bandit_log=bandit.bandit_log(context=context, candidates=offered, picks=picks, actions=actions),
    )
