"""The evaluation itself: the same platform code that serves, run on a split of MovieLens inside scratch stores.

Rows compared, all scored over every item seen in training minus the user's training items:

- `popularity`: items by number of training events.
- `embeddings`: the platform's embeddings as it trains and stores them today (`embeddings_train()` with its own
  ALS settings): user vector . item vector, both unit length.
- `embeddings_tuned`: the same ALS code with settings tuned on the validation split, scored by the dot product of
  the raw factors; it is the first retrieval source of the two-stage row.
- `two_stage`: candidates from the platform's sources (ALS, the knowledge-graph neighbourhoods of the user's items,
  popular items) re-ranked by the LightGBM lambdarank core (`scoring_app.ranker.ranker_fit`) over the feature
  store's offline features plus the retrieval scores.

The ranker never sees a test row. Its labels come from the training rows only: the training rows are cut into
`label_folds` folds with the same stratified splitter; for each fold the log holds the other folds, everything
(ALS, neighbourhoods, features) is rebuilt from that log and the fold's rows are the labels of the candidates.
Then the log holds all training rows, everything is rebuilt once more, and the fitted ranker scores the test users.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from django.db import connection
from scipy import sparse

from graph_app.features.definitions import FEATURE_INDEX
from graph_app.features.offline import FeatureRequest, features_offline
from graph_app.models import Item, Shopper
from graph_app.neighbourhoods import NEIGHBOURS_PER_ITEM, neighbourhoods_refresh
from graph_app.training import AlsSettings, embeddings_train, embeddings_train_with_factors
from scoring_app.evaluation.ingest import catalog_load, events_replace, movie_item_id, user_key
from scoring_app.evaluation.metrics import TOP_K, top_k_metrics
from scoring_app.evaluation.movielens import MovieLensData
from scoring_app.evaluation.split import stratified_folds, stratified_split
from scoring_app.ranker import RankingData, ranker_fit

Progress = Callable[[str], None]

# Chosen on the validation split (training rows split again with the same splitter), never on the test split.
TUNED_ALS = AlsSettings(regularization=30.0, alpha=1.4, iterations=15)
TUNED_RANKER_PARAMS: dict[str, object] = {"learning_rate": 0.02}
TUNED_RANKER_ROUNDS = 150

# The feature store's features that carry information on this data set. Left out: item_age_days (the catalog
# is created when the run starts, so it only encodes load order), item_price (no prices), item_in_stock (all in
# stock) and item_placement_ctr (no impressions were ever served).
STORE_FEATURES: tuple[str, ...] = (
    "user_category_frequency",
    "user_category_recency_days",
    "user_item_entity_affinity",
    "item_popularity_1h",
    "item_popularity_1d",
    "item_popularity_7d",
    "item_trend",
    "user_item_similarity",
)
# Scores the retrieval stage already has for each candidate (what a serving ranker gets with the candidates).
RETRIEVAL_FEATURES: tuple[str, ...] = (
    "als_score",
    "als_score_z",
    "als_score_share",
    "als_log_rank",
    "graph_score",
    "graph_score_share",
    "graph_log_rank",
    "popularity_log",
    "popularity_log_rank",
    "user_items",
)
FEATURE_NAMES: tuple[str, ...] = STORE_FEATURES + RETRIEVAL_FEATURES
# The ranker may only rank a candidate higher when the ALS score says so (it keeps the ranker from learning noise
# of a weaker fold model); every other feature is free.
MONOTONE: dict[str, int] = {"als_score": 1, "als_score_z": 1, "als_score_share": 1, "als_log_rank": -1}
FEATURES_CHUNK_USERS = 100


@dataclass(frozen=True)
class EvaluationConfig:
    als: AlsSettings = TUNED_ALS
    label_folds: int = 4
    als_candidates: int = 100
    graph_candidates: int = 50
    popular_candidates: int = 50
    neighbours_per_item: int = NEIGHBOURS_PER_ITEM
    ranker_params: Mapping[str, object] = field(default_factory=lambda: dict(TUNED_RANKER_PARAMS))
    ranker_rounds: int = TUNED_RANKER_ROUNDS
    placement: str = "movielens"
    k: int = TOP_K


@dataclass(frozen=True)
class Stage:
    """What the platform knows when the log holds a given set of ratings."""

    item_ids: list[str]
    user_ids: list[str]
    user_index: dict[str, int]
    seen: sparse.csr_matrix  # users x items, 1 where the user has an event on the item
    popularity: np.ndarray  # events per item
    als_scores: np.ndarray  # users x items, dot products of the raw ALS factors
    graph_scores: np.ndarray  # users x items, summed neighbourhood scores from the user's items
    as_of: list[datetime]  # per user: the time of the user's latest event in the log

    def eligible(self, row: int) -> np.ndarray:
        """Items seen in training that the user has not interacted with."""
        mask = self.popularity > 0
        mask[self.seen.indices[self.seen.indptr[row] : self.seen.indptr[row + 1]]] = False
        return mask


@dataclass
class Candidates:
    users: list[str]  # user keys, one query each
    items: list[np.ndarray]  # item indices per user
    retrieval: np.ndarray  # rows (users' candidates in order) x RETRIEVAL_FEATURES

    @property
    def group_sizes(self) -> np.ndarray:
        return np.asarray([len(items) for items in self.items], dtype=np.int64)


def _log_pairs() -> list[tuple[str, str, float, int]]:
    """(user, item, latest Unix time, events) of every user-item pair in the log."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT user_id, item_id, extract(epoch FROM max(occurred_at))::float8, count(*) FROM signals_app_event "
            "WHERE user_id <> '' AND item_id <> '' GROUP BY user_id, item_id"
        )
        return cursor.fetchall()


def _graph_matrix(item_index: dict[str, int]) -> sparse.csr_matrix:
    """items x items: row j holds the scores of j's neighbours, as stored by the neighbourhood refresh."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT item_id, neighbour_id, score FROM graph_app_itemneighbour")
        rows = [(item_index[a], item_index[b], score) for a, b, score in cursor.fetchall()]
    size = len(item_index)
    if not rows:
        return sparse.csr_matrix((size, size), dtype=np.float32)
    sources, targets, scores = zip(*rows, strict=True)
    return sparse.csr_matrix((np.asarray(scores, dtype=np.float32), (sources, targets)), shape=(size, size))


def stage_build(*, config: EvaluationConfig) -> Stage:
    """Train the embeddings and the neighbourhoods on the current log, and read what retrieval needs."""
    _, factors = embeddings_train_with_factors(als=config.als)
    pairs = _log_pairs()
    first = min((latest for _, _, latest, _ in pairs), default=0.0)
    end = max((latest for _, _, latest, _ in pairs), default=0.0)
    # Co-occurrence over the whole log, as of its last event (the platform's default window is 90 days to now).
    neighbourhoods_refresh(
        k=config.neighbours_per_item,
        window_days=math.ceil((end - first) / 86400) + 1,
        now=datetime.fromtimestamp(end, UTC) + timedelta(seconds=1),
    )
    item_ids = factors.item_ids
    item_index = {item_id: index for index, item_id in enumerate(item_ids)}
    user_ids = factors.user_ids
    user_index = {user: index for index, user in enumerate(user_ids)}
    rows, columns, latest_of_user = [], [], np.zeros(len(user_ids))
    popularity = np.zeros(len(item_ids))
    for user, item, latest, count in pairs:
        if item not in item_index or user not in user_index:
            continue
        rows.append(user_index[user])
        columns.append(item_index[item])
        popularity[item_index[item]] += count
        latest_of_user[user_index[user]] = max(latest_of_user[user_index[user]], latest)
    seen = sparse.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, columns)), shape=(len(user_ids), len(item_ids))
    )
    seen.sort_indices()
    return Stage(
        item_ids=item_ids,
        user_ids=user_ids,
        user_index=user_index,
        seen=seen,
        popularity=popularity,
        als_scores=(factors.user_factors @ factors.item_factors.T).astype(np.float32),
        graph_scores=np.asarray((seen @ _graph_matrix(item_index)).todense(), dtype=np.float32),
        as_of=[datetime.fromtimestamp(latest, UTC) for latest in latest_of_user],
    )


def _top(scores: np.ndarray, eligible: np.ndarray, count: int, *, positive_only: bool = False) -> np.ndarray:
    """Indices of the `count` best eligible items, best first (ties: lower index first)."""
    allowed = eligible & (scores > 0) if positive_only else eligible
    indices = np.flatnonzero(allowed)
    if count <= 0 or not len(indices):
        return indices[:0]
    order = np.lexsort((indices, -scores[indices]))
    return indices[order[:count]]


def _ranks(scores: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """1 for the best eligible item, 2 for the next... (ineligible items get ranks after them)."""
    masked = np.where(eligible, scores, -np.inf)
    order = np.lexsort((np.arange(len(scores)), -masked))
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    return ranks


def _retrieval_columns(stage: Stage, row: int, eligible: np.ndarray, items: np.ndarray) -> np.ndarray:
    als, graph = stage.als_scores[row].astype(np.float64), stage.graph_scores[row].astype(np.float64)
    pool = als[eligible]
    mean, spread = float(pool.mean()), float(pool.std()) or 1.0
    top_als, top_graph = float(pool.max()), float(graph[eligible].max())
    return np.column_stack(
        [
            als[items],
            (als[items] - mean) / spread,
            als[items] / top_als if top_als > 0 else np.zeros(len(items)),
            np.log(_ranks(als, eligible)[items]),
            graph[items],
            graph[items] / top_graph if top_graph > 0 else np.zeros(len(items)),
            np.log(_ranks(graph, eligible)[items]),
            np.log1p(stage.popularity[items]),
            np.log(_ranks(stage.popularity, eligible)[items]),
            np.full(len(items), float(stage.seen.indptr[row + 1] - stage.seen.indptr[row])),
        ]
    )


def candidates_generate(*, stage: Stage, users: list[str], config: EvaluationConfig) -> Candidates:
    """The union of the sources' candidates for each user that has history in the log, with retrieval scores."""
    kept, item_lists, blocks = [], [], []
    for user in users:
        row = stage.user_index.get(user)
        if row is None:
            continue
        eligible = stage.eligible(row)
        if not eligible.any():
            continue
        items = np.unique(
            np.concatenate(
                [
                    _top(stage.als_scores[row], eligible, config.als_candidates),
                    _top(stage.graph_scores[row], eligible, config.graph_candidates, positive_only=True),
                    _top(stage.popularity, eligible, config.popular_candidates),
                ]
            )
        )
        kept.append(user)
        item_lists.append(items)
        blocks.append(_retrieval_columns(stage, row, eligible, items))
    retrieval = np.vstack(blocks) if blocks else np.zeros((0, len(RETRIEVAL_FEATURES)))
    return Candidates(users=kept, items=item_lists, retrieval=retrieval)


def features_assemble(*, stage: Stage, candidates: Candidates, config: EvaluationConfig) -> np.ndarray:
    """Feature store values (offline, point in time at each user's latest event) beside the retrieval scores."""
    store_columns = [FEATURE_INDEX[name] for name in STORE_FEATURES]
    blocks = []
    for start in range(0, len(candidates.users), FEATURES_CHUNK_USERS):
        requests = [
            FeatureRequest(user, stage.item_ids[item], config.placement, stage.as_of[stage.user_index[user]])
            for user, items in zip(
                candidates.users[start : start + FEATURES_CHUNK_USERS],
                candidates.items[start : start + FEATURES_CHUNK_USERS],
                strict=True,
            )
            for item in items.tolist()
        ]
        blocks.append(features_offline(requests=requests)[:, store_columns])
    store = np.vstack(blocks) if blocks else np.zeros((0, len(STORE_FEATURES)))
    return np.hstack([store, candidates.retrieval])


def _pairs(ratings: np.ndarray) -> dict[str, set[str]]:
    relevant: dict[str, set[str]] = defaultdict(set)
    for user_id, movie_id in ratings[:, :2].tolist():
        relevant[user_key(user_id)].add(movie_item_id(movie_id))
    return relevant


def _ranking_data(
    *, values: np.ndarray, candidates: Candidates, stage: Stage, labels: dict[str, set[str]]
) -> RankingData:
    """Queries with at least one relevant candidate (the others carry no gradient in lambdarank)."""
    keep_rows, group_sizes, label_values = [], [], []
    start = 0
    for user, items in zip(candidates.users, candidates.items, strict=True):
        relevant = labels.get(user, set())
        query = np.asarray([stage.item_ids[item] in relevant for item in items.tolist()], dtype=np.int64)
        if query.any():
            keep_rows.append(np.arange(start, start + len(items)))
            group_sizes.append(len(items))
            label_values.append(query)
        start += len(items)
    rows = np.concatenate(keep_rows) if keep_rows else np.zeros(0, dtype=np.int64)
    return RankingData(
        values=values[rows],
        labels=np.concatenate(label_values) if label_values else np.zeros(0, dtype=np.int64),
        group_sizes=np.asarray(group_sizes, dtype=np.int64),
    )


def _ranker_params(config: EvaluationConfig) -> dict[str, object]:
    return {**config.ranker_params, "monotone_constraints": [MONOTONE.get(name, 0) for name in FEATURE_NAMES]}


def _top_k_by_scores(*, stage: Stage, users: list[str], scores: np.ndarray, k: int) -> dict[str, list[str]]:
    """Top k over every eligible item by a users x items score matrix (rows in stage.user_ids order)."""
    recommended = {}
    for user in users:
        row = stage.user_index.get(user)
        if row is None:
            continue
        items = _top(scores[row], stage.eligible(row), k)
        recommended[user] = [stage.item_ids[item] for item in items.tolist()]
    return recommended


def _popular_fill(*, stage: Stage, user: str, chosen: list[str], k: int) -> list[str]:
    """Users the ranker could not serve (no history) or short lists get popular items, as the platform does."""
    row = stage.user_index.get(user)
    eligible = stage.eligible(row) if row is not None else stage.popularity > 0
    taken = set(chosen)
    filler = [stage.item_ids[item] for item in _top(stage.popularity, eligible, k + len(chosen)).tolist()]
    return chosen + [item for item in filler if item not in taken][: k - len(chosen)]


StoredVectors = tuple[dict[str, np.ndarray], dict[str, np.ndarray]]


def _stored_vectors() -> StoredVectors:
    """The item and user embeddings as the platform stored them in PostgreSQL."""
    items = dict(Item.objects.filter(embedding__isnull=False).values_list("external_id", "embedding"))
    users = dict(Shopper.objects.filter(embedding__isnull=False).values_list("external_id", "embedding"))
    return items, users


def _stored_vector_scores(*, stage: Stage, vectors: StoredVectors) -> np.ndarray:
    """users x items: user vector . item vector (missing vectors score 0)."""
    item_vectors, user_vectors = vectors
    zero = np.zeros(len(next(iter(item_vectors.values()))) if item_vectors else 1)
    items = np.vstack([np.asarray(item_vectors.get(item, zero), dtype=np.float64) for item in stage.item_ids])
    users = np.vstack([np.asarray(user_vectors.get(user, zero), dtype=np.float64) for user in stage.user_ids])
    return (users @ items.T).astype(np.float32)


@dataclass
class EvaluationResult:
    split: str
    train_rows: int
    test_rows: int
    test_users: int
    results: dict[str, dict[str, float]]
    diagnostics: dict[str, Any]
    config: dict[str, Any]
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rounded(metrics: dict[str, float]) -> dict[str, float]:
    return {name: round(value, 4) for name, value in metrics.items()}


def evaluate(
    *, data: MovieLensData, config: EvaluationConfig, validation: bool = False, progress: Progress | None = None
) -> EvaluationResult:
    """Run the protocol inside the current (scratch) stores; with `validation`, on the validation split carved
    out of the training rows (for tuning) instead of the test split."""
    started = time.monotonic()
    say = progress or (lambda message: None)
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        timings[name] = round(time.monotonic() - since, 1)
        return time.monotonic()

    train_mask = stratified_split(groups=data.movie_ids)
    train, test = data.ratings[train_mask], data.ratings[~train_mask]
    if validation:
        inner = stratified_split(groups=train[:, 1])
        train, test = train[inner], train[~inner]
    relevant = _pairs(test)
    test_users = sorted(relevant)
    say(f"{'validation' if validation else 'test'} split: {len(train)} training rows, {len(test)} held out")

    clock = time.monotonic()
    catalog_load(data=data)
    clock = lap("catalog", clock)

    # Ranker training data: each fold of the training rows labels candidates built from the other folds.
    folds = stratified_folds(groups=train[:, 1], folds=config.label_folds)
    parts: list[RankingData] = []
    label_recall = []
    for fold in range(config.label_folds):
        say(f"ranker labels: fold {fold + 1} of {config.label_folds}")
        events_replace(ratings=train[folds != fold])
        stage = stage_build(config=config)
        labels = _pairs(train[folds == fold])
        candidates = candidates_generate(stage=stage, users=sorted(labels), config=config)
        values = features_assemble(stage=stage, candidates=candidates, config=config)
        parts.append(_ranking_data(values=values, candidates=candidates, stage=stage, labels=labels))
        label_recall.append(int(parts[-1].labels.sum()) / max(1, int((folds == fold).sum())))
    clock = lap("ranker_data", clock)
    ranker_train = RankingData(
        values=np.vstack([part.values for part in parts]),
        labels=np.concatenate([part.labels for part in parts]),
        group_sizes=np.concatenate([part.group_sizes for part in parts]),
    )
    say(f"fitting the ranker on {len(ranker_train.values)} rows, {len(ranker_train.group_sizes)} queries")
    booster = ranker_fit(
        train=ranker_train,
        feature_names=list(FEATURE_NAMES),
        params=_ranker_params(config),
        num_boost_round=config.ranker_rounds,
    )
    clock = lap("ranker_fit", clock)

    say("final: the log holds every training row")
    events_replace(ratings=train)
    # The platform's embeddings as it would train them today (its own ALS settings), before the tuned ones.
    embeddings_train()
    platform_vectors = _stored_vectors()
    stage = stage_build(config=config)
    clock = lap("final_build", clock)
    candidates = candidates_generate(stage=stage, users=test_users, config=config)
    values = features_assemble(stage=stage, candidates=candidates, config=config)
    predictions = booster.predict(values)
    clock = lap("final_score", clock)

    two_stage: dict[str, list[str]] = {}
    start = 0
    for user, items in zip(candidates.users, candidates.items, strict=True):
        scores = predictions[start : start + len(items)]
        als = candidates.retrieval[start : start + len(items), 0]
        start += len(items)
        order = np.lexsort((-als, -scores))[: config.k]  # ties broken by the ALS score
        two_stage[user] = [stage.item_ids[item] for item in items[order].tolist()]
    for user in test_users:
        two_stage[user] = _popular_fill(stage=stage, user=user, chosen=two_stage.get(user, []), k=config.k)

    popularity = np.broadcast_to(stage.popularity.astype(np.float32), stage.als_scores.shape)
    rows = {
        "popularity": _top_k_by_scores(stage=stage, users=test_users, scores=popularity, k=config.k),
        "embeddings": _top_k_by_scores(
            stage=stage,
            users=test_users,
            scores=_stored_vector_scores(stage=stage, vectors=platform_vectors),
            k=config.k,
        ),
        "two_stage": two_stage,
        "embeddings_tuned": _top_k_by_scores(stage=stage, users=test_users, scores=stage.als_scores, k=config.k),
    }
    covered = sum(
        len(relevant[user] & {stage.item_ids[item] for item in items.tolist()})
        for user, items in zip(candidates.users, candidates.items, strict=True)
    )
    importance = booster.feature_importance(importance_type="gain")
    total_gain = float(importance.sum()) or 1.0
    return EvaluationResult(
        split="validation" if validation else "test",
        train_rows=len(train),
        test_rows=len(test),
        test_users=len(test_users),
        results={
            name: _rounded(top_k_metrics(recommended=top, relevant=relevant, k=config.k)) for name, top in rows.items()
        },
        diagnostics={
            "candidates_per_user": round(float(candidates.group_sizes.mean()), 1) if candidates.users else 0.0,
            "candidate_recall": round(covered / max(1, len(test)), 4),
            "ranker_rows": len(ranker_train.values),
            "ranker_queries": len(ranker_train.group_sizes),
            "ranker_label_recall": [round(value, 4) for value in label_recall],
            "ranker_gain_share": {
                name: round(float(gain) / total_gain, 3)
                for name, gain in sorted(zip(FEATURE_NAMES, importance, strict=True), key=lambda pair: -pair[1])
            },
            "seconds_by_phase": timings,
        },
        config={
            "als": asdict(config.als),
            "label_folds": config.label_folds,
            "candidates": {
                "als": config.als_candidates,
                "graph": config.graph_candidates,
                "popular": config.popular_candidates,
            },
            "neighbours_per_item": config.neighbours_per_item,
            "ranker_params": _ranker_params(config),
            "ranker_rounds": config.ranker_rounds,
            "features": list(FEATURE_NAMES),
        },
        seconds=round(time.monotonic() - started, 1),
    )
