"""Retraining the ranker (control plane: ORM and SQL are fine here).

The latest slice of each user's history is held out (time-based, `graph_app.training.holdout_split`, the same
split the embeddings training tunes on). The users with a holdout are split by a seeded hash of their key:
- training users: their items are dealt over LABEL_FOLDS folds, and each fold's items are the labels, hidden from
  the embeddings fitted for them and from their features (as of the log's latest event, as serving sees a shopper
  now): the ranker learns which candidates a user likes at all, not only which one comes next in a session (a
  next-item label taught it "similar to the last items", which a returning shopper is not served by);
- validation users pick the LightGBM settings of a small grid, and gate users decide promotion, both on what they
  bought after the cut: the future, as serving meets it.
Each user's candidates are what serving would have retrieved (the "user_vector", "similar", "item_model" and
"popular" sources, through the same functions and the same retrieval-feature definitions, from embeddings and an
item-to-item model fitted on what the user's labels are not part of), with the feature store's point-in-time
values. Once there are enough served slates with a reaction, those slates (attributed impressions) are the training
queries instead.

The quality gate scores the new model, the active one and popularity on the gate users: nDCG@10 of the top 10 each
puts on the shelf, against everything those users bought after the cut. The new model is promoted only if it
beats popularity and is not worse than the active model; otherwise it stays a candidate with its numbers, for staff
to look at, canary or promote by hand. The figures are stored with the version.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from django.conf import settings
from django.utils import timezone

from graph_app.interface import (
    FEATURE_NAMES,
    ITEM_MODEL_DECIMALS,
    RETRIEVAL_COLUMNS,
    SIMILAR_DECIMALS,
    SIMILAR_PER_ITEM,
    TOP_K,
    USER_NEAREST_PER_USER,
    AlsSettings,
    FeatureRequest,
    Holdout,
    Interactions,
    ItemModel,
    ModelKind,
    Progress,
    active_als_settings,
    active_item_model_regularization,
    als_fit,
    features_offline,
    features_offline_sets,
    holdout_split,
    interactions_load,
    item_content_matrix,
    item_model_fit,
    item_model_lists,
    item_vectors_for,
    model_artifact,
    model_version_active,
    model_version_create,
    model_version_promote,
    popularity_scores,
    retrieval_features,
    search_fit_users,
    seeded_sample,
    similar_lists_compute,
    slates_reacted_to,
    slates_served_rows,
    top_k_items,
)
from personalization.db_router import lag_tolerant_reads
from personalization.training_compute import training_threads_used
from scoring_app.engine.ranking import ranker_compile_ahead, ranker_inputs, ranker_load
from scoring_app.engine.retrieval import (
    POPULAR_DEPTH,
    RECENT_ITEMS_USED,
    USER_VECTOR_NEIGHBOURS,
    item_model_rows,
    similar_rows,
)
from scoring_app.policy_evaluation import ranker_off_policy_gate
from scoring_app.ranker import RankingData, ranker_fit

logger = logging.getLogger(__name__)

TRAINING_WINDOW = timedelta(days=90)
# Slates with a click or purchase needed before impressions replace the holdout as the source of labels.
MIN_IMPRESSION_QUERIES = 200
IMPRESSION_QUERIES_MAX = 20_000
# Held-out users whose candidates are built (a seeded sample), and the share of them kept for the gate.
RANKER_USERS_MAX = 1500
# The embeddings each set of candidates is retrieved with are fitted on the pairs of its users and of at most this
# many others (a seeded sample): the item vectors of a few hundred thousand users' tastes are as good for building
# 1,500 users' candidates, and five fits over a million users' pairs were most of a training at that size. Smaller
# shops (every user fits) are unchanged.
RANKER_FIT_USERS_MAX = 200_000
GATE_SHARE = 0.25
VALIDATION_SHARE = 0.2
# Training users' labels: their items dealt over LABEL_FOLDS folds, each fold's share hidden from what ranks them
# in turn (users with at least HOLDOUT_MIN_LABELLED items there).
LABEL_FOLDS = 4
HOLDOUT_MIN_LABELLED = 3
MIN_QUERIES = 20
# What serving retrieves: the candidate set's size (settings.SCORE_CANDIDATES) from these sources.
PLACEMENT = "home"
# The ranker may rank a candidate higher only when the user's vector or item-to-item list says so (keeps it from
# learning the noise of the fold's models); every other feature is free.
MONOTONE = {
    f"retrieval_{source}_{measure}": direction
    for source in ("user_vector", "item_model")
    for measure, direction in (("score", 1), ("share", 1), ("log_rank", -1))
}
# LightGBM settings tried by the search, in order (over scoring_app.ranker.LIGHTGBM_PARAMS); rounds with each.
RANKER_SEARCH_GRID: tuple[tuple[dict[str, object], int], ...] = (
    ({"learning_rate": 0.05}, 100),
    ({"learning_rate": 0.02}, 150),
    ({"learning_rate": 0.05, "num_leaves": 15, "min_data_in_leaf": 50}, 150),
    ({"learning_rate": 0.1, "num_leaves": 63}, 60),
)


@dataclass(frozen=True)
class RankerTrainingReport:
    model_version: str | None
    promoted: bool
    label_source: str
    queries: int
    rows: int
    holdout: dict[str, float]
    active_holdout: dict[str, float] | None
    seconds: float
    gate: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class _Query:
    as_of: datetime
    requests: list[FeatureRequest]
    labels: list[int]


@lag_tolerant_reads()
def _impression_queries(since: datetime) -> list[_Query]:
    request_ids = slates_reacted_to(since=since, limit=IMPRESSION_QUERIES_MAX)
    if len(request_ids) < MIN_IMPRESSION_QUERIES:
        return []
    by_request = slates_served_rows(request_ids=request_ids)
    return [
        _Query(
            as_of=rows[0].served_at,
            requests=[FeatureRequest(row.user_key, row.item_id, row.placement, row.served_at) for row in rows],
            labels=[3 if row.purchased else 1 if row.clicked else 0 for row in rows],
        )
        for rows in by_request.values()
    ]


@dataclass
class HoldoutQueries:
    """Held-out users' candidates as serving would retrieve them at the cut: one query per user, rows in order,
    with the feature values, binary labels, and what each user bought next (all of it: the gate's denominator)."""

    users: list[str] = field(default_factory=list)
    items: list[list[str]] = field(default_factory=list)
    values: np.ndarray = field(default_factory=lambda: np.zeros((0, len(FEATURE_NAMES))))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    relevant: list[list[int]] = field(default_factory=list)  # item indexes, per user
    excluded: list[set[str]] = field(default_factory=list)  # recent and bought items, never on the shelf
    popular: list[str] = field(default_factory=list)  # the popularity baseline's order
    # Until `queries_featured` fills `values`: the rows' feature requests, the pairs hidden from them, and the
    # retrieval features of each query.
    requests: list[FeatureRequest] = field(default_factory=list)
    hidden: list[tuple[str, str]] = field(default_factory=list)
    retrieval: list[np.ndarray] = field(default_factory=list)

    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum([len(items) for items in self.items])]).astype(np.int64)

    def subset(self, chosen: list[int]) -> HoldoutQueries:
        offsets = self.offsets()
        rows = np.concatenate([np.arange(offsets[q], offsets[q + 1]) for q in chosen]) if chosen else np.zeros(0, int)
        return HoldoutQueries(
            [self.users[q] for q in chosen], [self.items[q] for q in chosen], self.values[rows], self.labels[rows],
            [self.relevant[q] for q in chosen], [self.excluded[q] for q in chosen], self.popular,
        )  # fmt: skip

    def ranking_data(self, *, with_positive_only: bool) -> RankingData:
        offsets = self.offsets()
        kept = [
            query
            for query in range(len(self.users))
            if not with_positive_only or self.labels[offsets[query] : offsets[query + 1]].any()
        ]
        chosen = self.subset(kept)
        return RankingData(
            values=chosen.values, labels=chosen.labels,
            group_sizes=np.asarray([len(items) for items in chosen.items], dtype=np.int32),
        )  # fmt: skip


def _fit_users(interactions: Interactions, users: np.ndarray) -> np.ndarray:
    """The pairs whose users the candidates' embeddings are fitted on: `users` and at most RANKER_FIT_USERS_MAX
    others, a seeded sample (every pair when all fit)."""
    return search_fit_users(interactions, users, limit=RANKER_FIT_USERS_MAX)


@dataclass(frozen=True)
class CandidateModels:
    """What retrieves every set of candidates of a large shop's training, fitted once: embeddings, the "similar"
    lists of the ranker users' items and the item-to-item model, on the pairs of a sample of other users and of the
    judged users before their cut, never a training user's pair (those are some set's labels). Each set's users
    get their own vectors from their visible pairs against these item factors (`users_folded_in`: ALS's own user
    step), so five sets cost one fit instead of five."""

    als: AlsSettings
    item_factors: np.ndarray
    similar_lists: dict[str, list[tuple[str, float]]]
    item_model: ItemModel | None

    def users_folded_in(self, interactions: Interactions, users: np.ndarray, visible: np.ndarray) -> np.ndarray:
        """The users' factors solved from their `visible` pairs (rows in `users` order)."""
        import implicit

        own = visible & np.isin(interactions.users, users)
        user_items = interactions.matrix(own, np.log1p(interactions.weights))[users]
        with training_threads_used(blas=False) as threads:
            model = implicit.als.AlternatingLeastSquares(
                factors=self.item_factors.shape[1], regularization=self.als.regularization, alpha=self.als.alpha,
                random_state=self.als.random_state, num_threads=threads,
            )  # fmt: skip
            model.item_factors = np.ascontiguousarray(self.item_factors, dtype=np.float32)
            return np.asarray(model.recalculate_user(np.arange(len(users)), user_items), dtype=np.float32)


def candidate_models_fit(
    *, interactions: Interactions, holdout: Holdout, judged: np.ndarray, training: np.ndarray, content: Any
) -> CandidateModels | None:
    """The shared models (see CandidateModels) when the shop has more users than its candidate sets fit on
    (RANKER_FIT_USERS_MAX others); None for a smaller shop, whose sets each fit their own on every user."""
    ranker_users = np.concatenate([judged, training])
    others = np.setdiff1d(np.arange(len(interactions.user_ids)), ranker_users)
    if len(others) <= RANKER_FIT_USERS_MAX:
        return None
    fitted = holdout.train & np.isin(
        interactions.users, np.concatenate([judged, seeded_sample(others, RANKER_FIT_USERS_MAX)])
    )
    als = active_als_settings()
    factors = als_fit(interactions, als, fitted)
    item_ids = interactions.item_ids
    seeds = np.unique(interactions.items[np.isin(interactions.users, ranker_users)])
    neighbours, cosines = similar_lists_compute(item_vectors_for(factors, content), k=SIMILAR_PER_ITEM, rows=seeds)
    regularization = active_item_model_regularization()
    return CandidateModels(
        als=als,
        item_factors=factors.item_factors,
        similar_lists=_similar_lists(item_ids, seeds, neighbours, cosines),
        item_model=item_model_fit(interactions, fitted, regularization=regularization) if regularization else None,
    )


def _similar_lists(
    item_ids: list[str], seeds: np.ndarray, neighbours: np.ndarray, cosines: np.ndarray
) -> dict[str, list[tuple[str, float]]]:
    """The "similar" source's lists of the `seeds` rows, as the embeddings training would publish them."""
    return {
        item_ids[row]: [
            (item_ids[index], round(float(score), SIMILAR_DECIMALS))
            for index, score in zip(neighbours[row], cosines[row], strict=True)
            if index >= 0
        ]
        for row in seeds.tolist()
    }


def holdout_queries(
    *,
    interactions: Interactions,
    holdout: Holdout,
    users: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    visible: np.ndarray | None = None,
    at: datetime | None = None,
    content: Any = None,
    shared: CandidateModels | None = None,
    featured: bool = True,
) -> HoldoutQueries:
    """The users' candidates and features as of their cut (see HoldoutQueries), from embeddings fitted on the
    `visible` pairs (the holdout's training part by default); the `labels` pairs (the held-out future by default)
    are the positives. The users' pairs that are not `visible` are hidden from the features too. `at`: the
    features' instant for every user instead of each one's cut. `content`: the catalog's `item_content_matrix()`
    (read when not given; a caller building several sets of queries reads it once). `shared`: a large shop's
    models fitted once for every set (`candidate_models_fit`); without them, this set's own are fitted here.
    Without `featured`, the feature values are left to a `queries_featured` call for several sets at once."""
    visible = holdout.train if visible is None else visible
    labels = holdout.held_out if labels is None else labels
    users = seeded_sample(holdout.users, RANKER_USERS_MAX) if users is None else users
    item_ids = interactions.item_ids
    own = np.isin(interactions.users, users)  # only these users' pairs are read below
    train = visible
    bought = interactions.matrix(train & interactions.purchased)
    if shared is None:
        factors = als_fit(interactions, active_als_settings(), visible & _fit_users(interactions, users))
        user_factors, item_factors = factors.user_factors[users], factors.item_factors
        # The "similar" source's lists, as the embeddings training would publish them from these factors.
        # Only the lists these users' recent items can read (a few thousand of a million-item catalog's).
        seeds = np.unique(interactions.items[visible & own])
        neighbours, cosines = similar_lists_compute(item_vectors_for(factors, content), k=SIMILAR_PER_ITEM, rows=seeds)
        similar_lists = _similar_lists(item_ids, seeds, neighbours, cosines)
        # The "item_model" source's lists, as the embeddings training would publish them from these pairs.
        regularization = active_item_model_regularization()
        model = item_model_fit(interactions, visible, regularization=regularization) if regularization else None
    else:
        user_factors, item_factors = shared.users_folded_in(interactions, users, visible), shared.item_factors
        similar_lists, model = shared.similar_lists, shared.item_model
    nearest, nearest_scores = top_k_items(user_factors, item_factors, bought[users], USER_NEAREST_PER_USER)
    item_model_found = np.full((len(users), 1), -1, dtype=np.int64)
    item_model_scores = np.zeros((len(users), 1), dtype=np.float32)
    if model is not None:
        item_model_found, item_model_scores = item_model_lists(
            model, interactions.matrix(visible)[users], exclude=bought[users]
        )
    popularity = popularity_scores(interactions, train)
    popular_order = np.lexsort((np.arange(len(popularity)), -popularity))[:POPULAR_DEPTH]
    popular_rows = [(item_ids[index], float(popularity[index])) for index in popular_order if popularity[index] > 0]
    by_user: dict[int, list[int]] = defaultdict(list)
    for pair, user in zip(np.flatnonzero(train & own).tolist(), interactions.users[train & own].tolist(), strict=True):
        by_user[user].append(pair)
    held: dict[int, list[int]] = defaultdict(list)
    for user, item in zip(
        interactions.users[labels & own].tolist(), interactions.items[labels & own].tolist(), strict=True
    ):
        held[user].append(item)
    hidden = [
        (interactions.user_ids[user], item_ids[item])
        for user, item in zip(
            interactions.users[~visible & own].tolist(), interactions.items[~visible & own].tolist(), strict=True
        )
    ]

    item_index = {item_id: column for column, item_id in enumerate(item_ids)}
    queries = HoldoutQueries()
    queries.popular = [item_id for item_id, _ in popular_rows]
    labels: list[np.ndarray] = []
    limit = settings.SCORE_CANDIDATES
    for position, user in enumerate(users.tolist()):
        pairs = sorted(by_user[user], key=lambda pair: (-interactions.latest[pair], interactions.items[pair]))
        recent = [item_ids[interactions.items[pair]] for pair in pairs][:RECENT_ITEMS_USED]
        purchased = {item_ids[interactions.items[pair]] for pair in pairs if interactions.purchased[pair]}
        excluded = set(recent) | purchased
        found = nearest[position] >= 0
        user_vector = [
            (item_ids[index], float(score))
            for index, score in zip(nearest[position][found], nearest_scores[position][found], strict=True)
            if item_ids[index] not in excluded
        ][:USER_VECTOR_NEIGHBOURS]
        listed = item_model_found[position] >= 0
        item_model = item_model_rows(
            [
                (item_ids[index], round(float(score), ITEM_MODEL_DECIMALS))
                for index, score in zip(
                    item_model_found[position][listed], item_model_scores[position][listed], strict=True
                )
            ],
            excluded,
        )
        rankings = {
            "similar": similar_rows(recent, similar_lists, _ALL_ITEMS),
            "user_vector": user_vector,
            "item_model": item_model,
            "popular": popular_rows,
        }
        # Merged in serving's source order, without the user's recent and bought items.
        merged = (item for name in ("similar", "user_vector", "item_model", "popular") for item, _ in rankings[name])
        candidates = [item for item in dict.fromkeys(merged) if item not in excluded][:limit]
        if not candidates:
            continue
        as_of = at or datetime.fromtimestamp(holdout.cut[user] - 0.001, UTC)
        user_key = interactions.user_ids[user]
        relevant = set(held[user])
        queries.users.append(user_key)
        queries.items.append(candidates)
        queries.relevant.append(sorted(relevant))
        queries.excluded.append(excluded)
        queries.requests += [FeatureRequest(user_key, item, PLACEMENT, as_of) for item in candidates]
        queries.retrieval.append(retrieval_features(rankings, candidates))
        labels.append(np.asarray([item_index[item] in relevant for item in candidates], dtype=np.int32))
    queries.hidden = hidden
    queries.labels = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int32)
    if featured:
        queries_featured([queries])
    return queries


def queries_featured(sets: list[HoldoutQueries]) -> None:
    """Fill each set's feature values, every candidate item's events read once for all the sets' rows (the five
    sets of a training share most of their items)."""
    values = features_offline_sets(sets=[(queries.requests, queries.hidden) for queries in sets])
    for queries, set_values in zip(sets, values, strict=True):
        if len(set_values):
            set_values[:, RETRIEVAL_COLUMNS] = np.vstack(queries.retrieval)
        queries.values = set_values
        queries.requests, queries.hidden, queries.retrieval = [], [], []


class _AllItems:
    """Offline, every item counts as in stock (the catalog keeps no stock history)."""

    def __contains__(self, item: object) -> bool:
        return True


_ALL_ITEMS = _AllItems()


def _split_users(interactions: Interactions, users: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(training, validation, gate) users: assigned by a seeded hash of their key, so the same user stays on the
    same side across trainings."""
    draws = np.asarray(
        [zlib.crc32(f"{settings.TRAINING_SEED}:{interactions.user_ids[user]}".encode()) / 2**32 for user in users]
    )
    gate = draws < GATE_SHARE
    validation = ~gate & (draws < GATE_SHARE + (1 - GATE_SHARE) * VALIDATION_SHARE)
    return users[~gate & ~validation], users[validation], users[gate]


def label_folds(interactions: Interactions, users: np.ndarray) -> np.ndarray:
    """Each pair's label fold (-1: never a label): every training user's items are dealt over LABEL_FOLDS folds in a
    seeded random order (users with at least HOLDOUT_MIN_LABELLED items). In turn, a fold's items are the labels,
    hidden from the embeddings fitted for them and from the features they are ranked with: items the user likes at
    any time, not only next, so the ranker learns taste as well as the moment."""
    generator = np.random.default_rng(settings.TRAINING_SEED)
    folds = np.full(len(interactions.users), -1, dtype=np.int64)
    pairs = np.flatnonzero(np.isin(interactions.users, users))
    pairs = pairs[np.argsort(interactions.users[pairs], kind="stable")]  # by user, each user's pairs in order
    boundaries = np.flatnonzero(np.diff(interactions.users[pairs])) + 1
    for own in np.split(pairs, boundaries) if len(pairs) else []:
        dealt = generator.permutation(len(own))  # drawn for every user, so one user's draw never shifts another's
        if len(own) >= HOLDOUT_MIN_LABELLED:
            folds[own] = dealt % LABEL_FOLDS
    return folds


_DISCOUNTS = 1.0 / np.log2(np.arange(2, TOP_K + 2))


def _ndcg(hits: np.ndarray, relevant: int) -> float:
    ideal = float(_DISCOUNTS[: min(relevant, TOP_K)].sum())
    return float(_DISCOUNTS[: len(hits)][hits].sum()) / ideal if ideal else 0.0


def slate_ndcg(queries: HoldoutQueries, scores: np.ndarray) -> float:
    """Mean nDCG@10 of each user's top 10 candidates by `scores` against everything the user bought next (items
    outside the candidates count as misses)."""
    offsets = queries.offsets()
    total = 0.0
    for query in range(len(queries.users)):
        block = scores[offsets[query] : offsets[query + 1]]
        order = np.lexsort((np.arange(len(block)), -block))[:TOP_K]
        total += _ndcg(queries.labels[offsets[query] : offsets[query + 1]][order] > 0, len(queries.relevant[query]))
    return total / max(1, len(queries.users))


def popularity_ndcg(queries: HoldoutQueries, item_ids: list[str]) -> float:
    """The same measure for the most popular items, without the user's recent and bought items."""
    index = {item_id: column for column, item_id in enumerate(item_ids)}
    total = 0.0
    for query in range(len(queries.users)):
        excluded = queries.excluded[query]
        shelf = [index[item] for item in queries.popular if item not in excluded][:TOP_K]
        total += _ndcg(np.isin(shelf, queries.relevant[query]), len(queries.relevant[query]))
    return total / max(1, len(queries.users))


def _monotone() -> list[int]:
    return [MONOTONE.get(name, 0) for name in FEATURE_NAMES]


def _fit(train: RankingData, params: dict[str, object], rounds: int):  # -> lightgbm.Booster
    return ranker_fit(
        train=train, feature_names=list(FEATURE_NAMES), params={**params, "monotone_constraints": _monotone()},
        num_boost_round=rounds,
    )  # fmt: skip


def _predict(booster: object, values: np.ndarray) -> np.ndarray:
    return np.asarray(booster.predict(values, num_threads=1))  # type: ignore[attr-defined]


def _ranker_search(
    train: RankingData, validation: HoldoutQueries, *, search: bool, budget_seconds: float
) -> tuple[object, dict[str, object], list[dict[str, object]]]:
    """The best of the grid by validation slate nDCG@10 (the first setting only without `search`), within the
    time budget: (booster, its settings, every tried setting with its figure)."""
    started = time.monotonic()
    grid = RANKER_SEARCH_GRID if search else RANKER_SEARCH_GRID[:1]
    best: tuple[float, object, dict[str, object]] | None = None
    tried: list[dict[str, object]] = []
    progress = Progress(
        f"ranker search ({budget_seconds:.0f} s budget): settings tried", total=len(grid), every_seconds=0
    )
    for params, rounds in grid:
        if tried and time.monotonic() - started > budget_seconds:
            break
        booster = _fit(train, params, rounds)
        progress.advance()
        figure = slate_ndcg(validation, _predict(booster, validation.values)) if validation.users else math.nan
        chosen = {**params, "num_boost_round": rounds}
        tried.append({**chosen, "validation_ndcg@10": round(figure, 6)})
        if best is None or (not math.isnan(figure) and figure > best[0] + 1e-9):
            best = (figure, booster, chosen)
    assert best is not None
    return best[1], best[2], tried


def _active_scores(queries: HoldoutQueries) -> tuple[str | None, np.ndarray | None]:
    """The active ranker's version and its scores of the gate's queries (None, None before the first one)."""
    active = model_version_active(kind=ModelKind.RANKER)
    if active is None:
        return None, None
    ranker = ranker_load(model_artifact(version=active.version))
    from graph_app.interface import FeatureMatrix

    matrix = FeatureMatrix(item_ids=[""] * len(queries.values), values=queries.values.copy())
    return active.version, np.asarray(ranker.booster.predict(ranker_inputs(ranker, matrix), num_threads=1))


def _not_trained(label_source: str, queries: int, started: float, reason: str) -> RankerTrainingReport:
    logger.info("score.ranker_not_trained", extra={"queries": queries, "reason": reason})
    return RankerTrainingReport(
        None, False, label_source, queries, 0, {}, None, round(time.monotonic() - started, 3), {"skipped": reason}
    )


def ranker_train(*, now: datetime | None = None, search: bool | None = None) -> RankerTrainingReport:
    """Train a ranker (see the module's docstring) and promote it if it passes the quality gate."""
    started = time.monotonic()
    now = now or timezone.now()
    search_on = settings.TRAINING_SEARCH if search is None else search
    interactions = interactions_load()
    holdout = holdout_split(interactions)
    train_users, validation_users, gate_users = _split_users(
        interactions, seeded_sample(holdout.users, RANKER_USERS_MAX)
    )
    # The users who judge the model, validation and gate alike, from one set of embeddings fitted before their cut.
    content = item_content_matrix()  # read once for the five sets of embeddings below
    judged_users = np.sort(np.concatenate([validation_users, gate_users]))
    shared = candidate_models_fit(
        interactions=interactions, holdout=holdout, judged=judged_users, training=train_users, content=content
    )
    # Each set of candidates is retrieved by embeddings its labels are hidden from: the step's bulk of the time.
    progress = Progress("ranker: candidate sets built", total=LABEL_FOLDS + 1, every_seconds=0)
    judged = holdout_queries(
        interactions=interactions, holdout=holdout, users=judged_users, content=content, shared=shared,
        featured=False,
    )  # fmt: skip
    progress.advance()
    gate_keys = {interactions.user_ids[user] for user in gate_users.tolist()}
    gate_queries = [query for query, key in enumerate(judged.users) if key in gate_keys]
    if not gate_queries or not len(train_users):
        return _not_trained("holdout", len(gate_queries), started, "too little history for a holdout")
    impressions = _impression_queries(now - TRAINING_WINDOW)
    if impressions:
        queries_featured([judged])
        impressions.sort(key=lambda query: query.as_of)
        label_source = "impressions"
        requests = [request for query in impressions for request in query.requests]
        train = RankingData(
            values=features_offline(requests=requests),
            labels=np.asarray([label for query in impressions for label in query.labels], dtype=np.int32),
            group_sizes=np.asarray([len(query.requests) for query in impressions], dtype=np.int32),
        )
    else:
        label_source = "holdout"
        present = datetime.fromtimestamp(float(interactions.latest.max()), UTC)
        fold_sets = []
        folds = label_folds(interactions, train_users)
        for fold in range(LABEL_FOLDS):
            labelled = folds == fold
            # Everything the training users did (their own future too) but the fold's labels; never the future
            # of the validation and gate users, which judges the model. As of the log's present (its latest
            # event: now, in a live shop), as serving sees them: a user inactive for months has the expired state
            # serving will read. The log's clock, not the wall clock, so that the same log trains the same model.
            visible = (holdout.train | (holdout.held_out & np.isin(interactions.users, train_users))) & ~labelled
            fold_sets.append(
                holdout_queries(
                    interactions=interactions, holdout=holdout, users=train_users, labels=labelled, visible=visible,
                    at=present, content=content, shared=shared, featured=False,
                )
            )  # fmt: skip
            progress.advance()
        queries_featured([judged, *fold_sets])
        parts = [queries.ranking_data(with_positive_only=True) for queries in fold_sets]
        train = RankingData(
            values=np.vstack([part.values for part in parts]),
            labels=np.concatenate([part.labels for part in parts]),
            group_sizes=np.concatenate([part.group_sizes for part in parts]),
        )
    gate = judged.subset(gate_queries)
    gate_set = set(gate_queries)
    validation = judged.subset([query for query in range(len(judged.users)) if query not in gate_set])
    if len(train.group_sizes) < MIN_QUERIES:
        return _not_trained(label_source, len(train.group_sizes), started, "too few training queries")
    booster, chosen, tried = _ranker_search(
        train, validation, search=search_on, budget_seconds=settings.TRAINING_SEARCH_SECONDS
    )
    new_ndcg = slate_ndcg(gate, _predict(booster, gate.values))
    baseline = popularity_ndcg(gate, interactions.item_ids)
    active_version, active_scores = _active_scores(gate)
    active_ndcg = slate_ndcg(gate, active_scores) if active_scores is not None else None
    retrieval_order = -np.nan_to_num(gate.values[:, FEATURE_NAMES.index("retrieval_user_vector_log_rank")], nan=99.0)
    promoted = new_ndcg > baseline + 1e-9 and (active_ndcg is None or new_ndcg >= active_ndcg - 1e-9)
    gate_figures: dict[str, object] = {
        "users": len(gate.users),
        "ndcg@10": round(new_ndcg, 6),
        "popularity_ndcg@10": round(baseline, 6),
        "active_ndcg@10": None if active_ndcg is None else round(active_ndcg, 6),
        "user_vector_ndcg@10": round(slate_ndcg(gate, retrieval_order), 6),
        "passed": promoted,
    }
    model_version = model_version_create(
        kind=ModelKind.RANKER,
        artifact=booster.model_to_string().encode(),  # type: ignore[attr-defined]
        metrics={
            "label_source": label_source,
            "queries": len(train.group_sizes),
            "rows": len(train.values),
            "trees": booster.num_trees(),  # type: ignore[attr-defined]
            "settings": chosen,
            "search": {"enabled": search_on, "tried": tried},
            "gate": gate_figures,
            "holdout": {"ndcg@10": round(new_ndcg, 6), "queries": len(gate.users)},
            "holdout_popularity_baseline": {"ndcg@10": round(baseline, 6)},
            "active_version": active_version,
            "active_holdout": None if active_ndcg is None else {"ndcg@10": round(active_ndcg, 6)},
            "feature_importance_gain": dict(
                zip(FEATURE_NAMES, (round(float(v), 3) for v in booster.feature_importance("gain")), strict=True)  # type: ignore[attr-defined]
            ),
        },
        feature_names=list(FEATURE_NAMES),
        training_window=_window(interactions, holdout),
    )
    if promoted and settings.SCORE_RANKER_OPE_GATE_PLACEMENT:
        promoted = _off_policy_gate(model_version, gate_figures)
    if promoted:
        ranker_compile_ahead(bytes(model_version.artifact))
        model_version_promote(model_version=model_version)
    else:
        logger.warning("score.ranker_not_promoted", extra={"version": model_version.version, **gate_figures})
    report = RankerTrainingReport(
        model_version=model_version.version,
        promoted=promoted,
        label_source=label_source,
        queries=len(train.group_sizes),
        rows=len(train.values),
        holdout={"ndcg@10": round(new_ndcg, 6), "queries": len(gate.users)},
        active_holdout=None if active_ndcg is None else {"ndcg@10": round(active_ndcg, 6)},
        seconds=round(time.monotonic() - started, 3),
        gate=gate_figures,
    )
    logger.info("score.ranker_trained", extra=report.__dict__)
    return report


def _off_policy_gate(model_version: Any, gate_figures: dict[str, object]) -> bool:
    """The off-policy gate on SCORE_RANKER_OPE_GATE_PLACEMENT's log (`ranker_off_policy_gate`), recorded with the
    version's gate figures; whether it passed."""
    gate = ranker_off_policy_gate(version=model_version.version)
    gate_figures["off_policy"] = gate.figures()
    gate_figures["passed"] = gate.passed
    model_version.metrics["gate"] = gate_figures
    model_version.save(update_fields=["metrics"])
    return gate.passed


def _window(interactions: Interactions, holdout: Holdout) -> tuple[datetime | None, datetime | None]:
    train = interactions.latest[holdout.train]
    if not len(train):
        return None, None
    return datetime.fromtimestamp(float(train.min()), UTC), datetime.fromtimestamp(float(train.max()), UTC)
