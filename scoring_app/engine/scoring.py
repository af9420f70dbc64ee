"""The Score layer's answer for one request: retrieval's candidates ranked, with a confidence and the path taken.

- `ranker`: the active (or, for a canary's share of users, the canary) LightGBM model orders every candidate by its
  feature-store row, whatever its confidence (how much it knew about the user for the items it put on top). The
  shelf's slots are drawn by the ranker's logging policy (`ranking_exploration`: a share of slates drawn from the
  best-scored pool, the rest its top k), each with its propensity, and the pool it drew from rides with the slate
  (`RankerPool`) to the impression log, so that another ranker can be evaluated off-policy on it.
- `bandit`: a user with no history at all (no recent items, no favourite categories, only popular, fresh or
  category best-seller candidates) when no ranker serves, or a placement whose scorer is the bandit: the contextual
  bandit picks the slate and logs each item's propensity.
- `fallback`: no model serves (or the feature store is down): retrieval's own order.

Exploration is confined to at most SCORE_EXPLORATION_SLOTS slots (the last ones shown) of an ordered slate, the
ranker's or retrieval's: a new item's slot, and when the order is unsure (low confidence, or no ranker) the
bandit's picks among the next-best candidates. An untrained bandit choosing whole slates for customers with months
of history served noise; a slot or two keeps learning at the price of a slot or two. Items related to the request's
context (a product page's item, a cart: the "context" retrieval source) lead the slate, each group in its order.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.conf import settings
from redis.exceptions import RedisError

from graph_app.interface import FeatureMatrix, features_fetch
from personalization.candidates import Candidate
from scoring_app.engine import bandit, ranking_exploration, registry
from scoring_app.engine.ranking import RANKER, LoadedRanker, ranker_scores, ranking_confidence
from scoring_app.engine.retrieval import CandidateSet, UserState

logger = logging.getLogger(__name__)

PATH_RANKER = "ranker"
PATH_BANDIT = "bandit"
PATH_FALLBACK = "fallback"
# Candidates from these sources alone say nothing about the user: with only these, the user has no history.
IMPERSONAL_SOURCES = frozenset(("popular", "fresh", "category_popular"))
CONTEXT_SOURCE = "context"


@dataclass(frozen=True)
class ScoreResult:
    items: list[Candidate]
    confidence: float
    path: str
    model_version: str | None
    degraded: list[str] = field(default_factory=list)
    # What the bandit learns from (its context, the offered actions, propensities), when it chose the slate or some
    # of its slots.
    bandit_log: Any = None
    # "canary" when the model that chose the slate is this user's canary, else "control".
    variant: str = "control"
    # What the ranker drew the slate from, logged for off-policy evaluation (None: not the ranker's, or not logged).
    ranker_pool: RankerPool | None = None


@dataclass(frozen=True)
class RankerPool:
    """The pool a ranker slate was drawn from (rows of the request's candidates, best first): item ids, their
    feature rows as served, the serving ranker's scores, and the logging policy; what the impression log keeps of a
    ranker slate for off-policy evaluation (`graph_app.state.ranker_log`)."""

    item_ids: list[str]
    feature_names: tuple[str, ...]
    features: np.ndarray  # (N, F)
    logging_scores: np.ndarray  # (N,)
    policy: ranking_exploration.ExplorationPolicy

    def record(self, items: Sequence[Candidate]) -> dict[str, object]:
        """The impression stream's record of the pool, with [pool row, draw slot, served slot, propensity] of each
        served item the ranker's draw placed (`items`: the slate as served, after rules and caps)."""
        rows = {item_id: row for row, item_id in enumerate(self.item_ids)}
        shown = [
            [rows[item.item_id], item.logging_slot, slot, item.logging_propensity]
            for slot, item in enumerate(items)
            if item.logging_slot is not None and item.item_id in rows
        ]
        policy = self.policy
        return {
            "feature_names": list(self.feature_names),
            "item_ids": self.item_ids,
            "features": base64.b64encode(self.features.astype("<f4").tobytes()).decode(),
            "logging_scores": self.logging_scores.tolist(),
            "policy": {"share": policy.share, "temperature": policy.temperature, "pool": policy.pool},
            "shown": shown,
        }


def _scored(
    candidate: Candidate, score: float, propensity: float | None = None, entity_payload: bytes | None = None
) -> Candidate:
    """The candidate with Score's answer filled in: its score (the ranker's, the bandit's or retrieval's), its
    provenance, and what the bandit and the feature read found. On a copy (only the few returned are copied): the
    caller's candidate set stays as retrieval left it, to be scored again."""
    scored = candidate.copied()
    scored.score = round(float(score), 6)
    if not scored.sources:
        scored.sources = (scored.source,)
    if propensity is not None:
        scored.propensity = propensity
    if entity_payload is not None:
        scored.entity_payload = entity_payload
    return scored


def _entities(features: FeatureMatrix | None, row: int | None) -> bytes | None:
    """The row's entity keys as read (b"": read, none), or None when the matrix did not read them."""
    if features is None or not features.entities or row is None:
        return None
    return features.entities[row] or b""


def _in_stock(features: FeatureMatrix, candidates: list[Candidate]) -> tuple[list[Candidate], FeatureMatrix]:
    """Drop what went out of stock since the candidate set was cached (unknown stock is kept)."""
    stock = features.column("item_in_stock")
    keep = np.flatnonzero(~(stock == 0.0))
    if len(keep) == len(candidates):
        return candidates, features
    return [candidates[index] for index in keep], features.rows(keep)


def _context_first(order: np.ndarray, candidates: list[Candidate]) -> np.ndarray:
    """`order` (rows of `candidates`) with the items related to the request's context (a product page's item, a
    cart: the "context" source found them) first, each group in its order."""
    related = _related(candidates)
    if not related.any():
        return order
    leading = related[order]
    return np.concatenate([order[leading], order[~leading]])


def _retrieval_order(candidates: list[Candidate]) -> np.ndarray:
    return _context_first(np.arange(len(candidates)), candidates)


def _fallback(
    candidates: list[Candidate],
    k: int,
    model_version: str | None,
    degraded: list[str],
    features: FeatureMatrix | None = None,
) -> ScoreResult:
    chosen = _retrieval_order(candidates)[:k].tolist()
    personalized = sum(1 for row in chosen if candidates[row].source not in ("popular", "fresh"))
    return ScoreResult(
        items=[
            _scored(candidates[row], candidates[row].score, entity_payload=_entities(features, row)) for row in chosen
        ],
        # The share of slots filled by the user's own signals: the Surface decides how much to trust the slate.
        confidence=round(personalized / k, 4) if k else 0.0,
        path=PATH_FALLBACK,
        model_version=model_version,
        degraded=degraded,
    )


def _related(candidates: list[Candidate]) -> np.ndarray:
    """Which candidates the request's context found (a product page's item, a cart)."""
    return np.fromiter(
        (CONTEXT_SOURCE in candidate.sources or candidate.source == CONTEXT_SOURCE for candidate in candidates),
        bool,
        len(candidates),
    )


@dataclass(frozen=True)
class _Ranking:
    """The ranker's answer: every candidate's row in serving order, their scores, its confidence over the top k,
    the draw (rows placed by the logging policy, in slot order, and their propensities) and the pool logged."""

    order: np.ndarray
    scores: np.ndarray
    confidence: float
    drawn: np.ndarray
    propensities: np.ndarray
    pool: RankerPool | None


def ranker_exploration_rng(*, user_key: str, placement: str, now: float, seconds: float) -> np.random.Generator:
    """The random numbers of the ranker's draw for this user in this placement: the same within the user's
    exploration window (`bandit.exploration_window`, SCORE_EXPLORATION_RESEED_SECONDS; 0: fresh every request), so
    that a refresh shows the same slate, as the bandit's explored slots do."""
    seed = bandit.exploration_seed(user_key=user_key, placement=placement, now=now, seconds=seconds, stream="ranker")
    return np.random.default_rng(seed)


def _ranked(
    ranker: registry.ServingModel,
    candidates: list[Candidate],
    features: FeatureMatrix,
    k: int,
    *,
    context: bool,
    shelf: int,
    rng: np.random.Generator,
) -> _Ranking:
    """The ranker's scores, and its slate: with `context`, the context's items first in its order; then the
    `shelf`'s other slots drawn by the logging policy (`ranking_exploration.slate_draw`); then the rest in its
    order (what the Surface may need beyond the shelf). The pool is logged for SCORE_RANKER_POOL_LOG_SHARE of the
    slates."""
    loaded: LoadedRanker = ranker.model
    scores = ranker_scores(loaded, features)
    order = np.argsort(-scores, kind="stable")
    related = _related(candidates) if context else np.zeros(len(candidates), dtype=bool)
    leading = order[related[order]]
    others = np.flatnonzero(~related)
    slots = max(0, min(shelf, k) - len(leading))
    if not slots or not len(others):
        order = np.concatenate([leading, order[~related[order]]])
        empty = np.zeros(0, dtype=np.int64)
        return _Ranking(order, scores, ranking_confidence(features, order[:k]), empty, np.zeros(0), None)
    policy = ranking_exploration.policy_from_settings()
    draw = ranking_exploration.slate_draw(scores=scores[others], k=slots, policy=policy, rng=rng)
    drawn = others[draw.rows]
    placed = np.zeros(len(candidates), dtype=bool)
    placed[drawn] = True
    order = np.concatenate([leading, drawn, order[~related[order] & ~placed[order]]])
    pool = None
    if rng.random() < settings.SCORE_RANKER_POOL_LOG_SHARE:
        rows = others[draw.pool_rows]
        pool = RankerPool(
            item_ids=[candidates[row].item_id for row in rows],
            feature_names=features.names,
            features=features.values[rows],
            logging_scores=scores[rows],
            policy=policy,
        )
    return _Ranking(order, scores, ranking_confidence(features, order[:k]), drawn, draw.propensities, pool)


def _has_history(state: UserState, candidates: list[Candidate]) -> bool:
    """Whether the user has any history: recent items of their own (the request's context items lead the list),
    favourite categories, or candidates a personal source (not popular, fresh or category best sellers) found."""
    if len(state.recent_items) > len(state.seeds) or state.favourite_categories:
        return True
    return any(not IMPERSONAL_SOURCES.issuperset(candidate.sources or (candidate.source,)) for candidate in candidates)


def slate_score(
    *,
    state: UserState,
    candidate_set: CandidateSet,
    placement: str,
    k: int,
    scorer: str = "auto",
    explore_slot: int | None = None,
    model: tuple[str, str] | None = None,
) -> ScoreResult:
    """`scorer`: auto (the ranker, or the bandit for a user with no history when no ranker serves; the bandit
    explores a slot or two), ranker (never the bandit), bandit (never the ranker), retrieval (retrieval's order).
    `explore_slot`: the last slot the bandit may explore (default: the last of the k); the Surface asks for more
    than it shows and puts it on the shelf. `model`: (kind, version) an experiment serves in place of the kind's
    active model; not loaded yet, the current one serves, degraded "experiment_model_loading"."""
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
            retrieval=candidate_set.retrieval,
        )  # fmt: skip
    except RedisError as error:
        logger.warning("score.features_unavailable", extra={"error": str(error)})
        return _fallback(candidates, k, state.model_version, ["features_unavailable"])
    candidates, features = _in_stock(features, candidates)

    if scorer == "retrieval":
        return _fallback(candidates, k, state.model_version, degraded, features)
    history = _has_history(state, candidates)
    last_slot = min(k, explore_slot + 1 if explore_slot is not None else k) - 1
    versions = _experiment_versions(model, degraded)
    explorer = _Explorer(state, placement, candidates, features, last_slot if scorer != "ranker" else -1,
                         versions.get(bandit.BANDIT))  # fmt: skip
    ranker = (
        registry.serving_model(RANKER, user_key=state.user_key, version=versions.get(RANKER))
        if scorer != "bandit"
        else None
    )
    if ranker is not None:
        try:
            rng = ranker_exploration_rng(
                user_key=state.user_key, placement=placement, now=time.time(),
                seconds=settings.SCORE_EXPLORATION_RESEED_SECONDS,
            )  # fmt: skip
            ranking = _ranked(ranker, candidates, features, k, context=bool(state.seeds), shelf=last_slot + 1, rng=rng)
        except Exception as error:  # a broken model must not break the shelf
            logger.exception("score.ranker_failed", extra={"version": ranker.version})
            degraded.append(f"ranker_failed:{type(error).__name__}")
        else:
            items = _ranked_items(ranking, candidates, features, k)
            # Unsure, the ranker still orders the slate: the bandit explores its slots only.
            unsure = ranking.confidence < settings.SCORE_MIN_RANKER_CONFIDENCE
            reason = ("low_confidence" if history else "new_user") if unsure else "new_items"
            items, log = explorer.explore(ranking.order, items, unsure=unsure, reason=reason)
            return ScoreResult(
                items, ranking.confidence, PATH_RANKER, ranker.version, degraded, log, _variant(state), ranking.pool
            )

    if scorer == "bandit" or (scorer == "auto" and not history):
        reason = "missing_features" if history else "new_user"
        chosen = _bandit(state, candidates, placement, k, reason, features, versions.get(bandit.BANDIT))
        if chosen is not None:
            return dataclasses.replace(chosen, degraded=degraded + chosen.degraded)
    if ranker is None and scorer != "bandit":
        degraded.append("ranker_unavailable")
    fallback = _fallback(candidates, k, state.model_version, degraded, features)
    if scorer != "auto" or not history:
        return fallback
    items, log = explorer.explore(_retrieval_order(candidates), fallback.items, unsure=True, reason="missing_features")
    return dataclasses.replace(fallback, items=items, bandit_log=log)


def _experiment_versions(model: tuple[str, str] | None, degraded: list[str]) -> dict[str, str]:
    """{kind: version} of the experiment's model when it is loaded; while it loads (in the background), nothing:
    the current model serves, and the slate says so."""
    if model is None:
        return {}
    kind, version = model
    if registry.experiment_model(kind, version=version) is None:
        degraded.append("experiment_model_loading")
        return {}
    return {kind: version}


def _ranked_items(ranking: _Ranking, candidates: list[Candidate], features: FeatureMatrix, k: int) -> list[Candidate]:
    """The top k of the ranking, scored; the drawn ones carry their draw slot and propensity."""
    drawn = {int(row): slot for slot, row in enumerate(ranking.drawn)}
    items = []
    for row in ranking.order[:k]:
        item = _scored(candidates[row], ranking.scores[row], entity_payload=_entities(features, row))
        slot = drawn.get(int(row))
        if slot is not None:
            item.logging_slot = slot
            item.logging_propensity = round(float(ranking.propensities[slot]), 9)
        items.append(item)
    return items


def _variant(state: UserState) -> str:
    return registry.serving_variant(RANKER, user_key=state.user_key)


# A new item (no popularity yet, created within this many days) cannot earn a ranker score: the bandit may give it
# the last slot of a ranked slate, so new items are explored (and their propensity logged) on every shelf.
NEW_ITEM_DAYS = 30.0
# Exploration never touches the first EXPLORATION_MIN_SLOTS - 1 slots (nor a shelf shorter than this).
EXPLORATION_MIN_SLOTS = 4
# SCORE_EXPLORATION_SLOTS is capped here: past two slots the slate is the bandit's again.
EXPLORATION_SLOTS_MAX = 2
# The new items offered for a slot: the first ones in retrieval order (each offered action costs features to
# build and a line in the impression log); and, when the order is unsure, the next-best candidates offered with
# them (after the slots above the exploration ones).
NEW_ITEMS_OFFERED = 10
NEXT_BEST_OFFERED = 10


def new_item_rows(popularity_7d: np.ndarray, age_days: np.ndarray) -> np.ndarray:
    """Rows of the items that never had an event (popularity exactly zero) and were created within NEW_ITEM_DAYS.
    A missing popularity (NaN: the latest event is older than its TTL) is an old item gone quiet, not a new one: a
    shop that loads its catalog after a year of history would otherwise explore its back catalog as new."""
    return np.flatnonzero((popularity_7d == 0.0) & (age_days <= NEW_ITEM_DAYS))  # NaN compares False


def _exploration_slots(last_slot: int, shown: int, unsure: bool) -> int:
    """How many slots, ending at `last_slot`, the bandit fills: one for a new item when the order is sure, up to
    SCORE_EXPLORATION_SLOTS when it is not; none of the first EXPLORATION_MIN_SLOTS - 1."""
    if last_slot < 0 or shown <= last_slot:
        return 0
    budget = max(0, min(settings.SCORE_EXPLORATION_SLOTS, EXPLORATION_SLOTS_MAX))
    if not unsure:
        budget = min(budget, 1)
    return max(0, min(budget, last_slot + 2 - EXPLORATION_MIN_SLOTS))


@dataclass(frozen=True)
class _Explorer:
    """A request's exploration: its candidates (in retrieval order) and their feature rows, and the last slot the
    bandit may fill (-1: none)."""

    state: UserState
    placement: str
    candidates: list[Candidate]
    features: FeatureMatrix
    last_slot: int
    # The bandit version an experiment serves instead of the active one (None: the active one).
    bandit_version: str | None = None

    def explore(
        self, order: np.ndarray, items: list[Candidate], *, unsure: bool, reason: str
    ) -> tuple[list[Candidate], Any]:
        """`items` (the top of `order`, rows of the candidates) with the bandit's picks in the exploration slots,
        and its log (None: it picked nothing). Sure of the order, it picks a new item for the last slot; unsure, it
        picks the slots among the next-best candidates after the slots above them, and the new items. The picks go
        into the slots in the order picked (the logged propensities assume it); the rest keep their order."""
        slots = _exploration_slots(self.last_slot, len(items), unsure)
        if not slots:
            return items, None
        first = self.last_slot - slots + 1
        # What the slots above show is not offered; what the overfetch holds below them may be (and moves up).
        above = {item.item_id for item in items[:first]}
        rows = [int(row) for row in order[first : first + NEXT_BEST_OFFERED]] if unsure else []
        rows += [row for row in self._new_rows(above) if row not in rows]
        if not rows:
            return items, None
        offered = [self.candidates[row] for row in rows]
        explored = _bandit(self.state, offered, self.placement, slots, reason, self.features, self.bandit_version)
        if explored is None or not explored.items:
            return items, None
        picked = {item.item_id for item in explored.items}
        rest = [item for item in items[first:] if item.item_id not in picked]
        return [*items[:first], *explored.items, *rest][: len(items)], explored.bandit_log

    def _new_rows(self, shown: set[str]) -> list[int]:
        """The first NEW_ITEMS_OFFERED new items in retrieval order that are not `shown`."""
        new = new_item_rows(self.features.column("item_popularity_7d"), self.features.column("item_age_days"))
        rows = [int(row) for row in new[: NEW_ITEMS_OFFERED + len(shown)] if self.candidates[row].item_id not in shown]
        return rows[:NEW_ITEMS_OFFERED]


def _bandit(
    state: UserState,
    offered: list[Candidate],
    placement: str,
    k: int,
    reason: str,
    features: FeatureMatrix,
    version: str | None = None,
) -> ScoreResult | None:
    """The contextual bandit's k picks among the offered candidates (`features`: rows of at least those items), or
    None when no bandit model serves. Its context comes from the feature reads the request already made; its random
    numbers are the user's for the placement and the hour (`bandit.exploration_rng`), so that repeated requests
    show the same picks."""
    serving = bandit.serving_bandit(user_key=state.user_key, version=version)
    if serving is None:
        return None
    now = time.time()
    try:
        context = bandit.bandit_context_from_features(
            placement=placement, now=now, reason=reason, candidates=offered, features=features
        )
        actions = bandit.bandit_actions(context, offered)
        rng = bandit.exploration_rng(
            user_key=state.user_key, placement=placement, now=now, seconds=settings.SCORE_EXPLORATION_RESEED_SECONDS
        )
        picks = bandit.bandit_choose(
            model=serving.model, context=context, candidates=offered, k=k, rng=rng, actions=actions
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
