"""Learning item and user embeddings from the event log (control plane: ORM and SQL are fine here).

Collaborative vectors come from implicit's ALS on the weighted user-item matrix; a ridge regression maps
content features onto them so that items with little or no history get a vector in the same space. An item's
final vector blends the two by how much history it has.

Each training tunes itself: the most recent slice of each user's history is held out (time-based), ALS settings
from a small grid are fitted on the rest within a time budget (TRAINING_SEARCH_SECONDS) and scored by the
nDCG@10 of their top 10 on the held-out items; the best settings are refitted on the whole log. The model serves
only if its held-out nDCG@10 beats popularity's on the same users (the quality gate); the figures and the settings
are stored with the model version. The ranker (`scoring_app.training`) trains on the same held-out slice.
"""

from __future__ import annotations

import io
import logging
import math
import time
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from django.conf import settings
from django.db import connection, transaction

from graph_app.embeddings import ItemContent, content_features, feature_matrix, normalize_rows
from graph_app.item_model import ItemModelSearch, item_model_fit, item_model_publish, item_model_search
from graph_app.item_vector_index import item_vector_index_build, item_vector_index_drop
from graph_app.model_registry.models import ModelVersion
from graph_app.model_registry.selectors import model_version_active
from graph_app.model_registry.services import model_version_create, model_version_register
from graph_app.models import Item
from graph_app.online import catalog_items_rebuild
from graph_app.progress import Progress
from graph_app.similar_lists import similar_lists_publish
from graph_app.state.event_types import BUILT_IN_EVENT_TYPES
from graph_app.state.log_reads import interaction_weights_sql
from graph_app.user_lists import FILTERED_SCORE, user_lists_publish
from personalization.db_router import lag_tolerant_reads, read_connection
from personalization.training_compute import training_threads, training_threads_used

logger = logging.getLogger(__name__)

ALS_ITERATIONS = 15
# The final fit starts from the item factors the search chose (fitted on all but the holdout's folds): a few
# iterations take it from there to the whole log, a third of the time of a fit from random factors.
ALS_WARM_ITERATIONS = 5
# Found on a validation split of MovieLens 100K (implicit feedback, log-weighted confidences): regularization 30,
# alpha 1.4. The defaults of earlier versions (0.05, 1.0) underfit and scored below popularity there.
ALS_REGULARIZATION = 30.0
ALS_ALPHA = 1.4
ALS_RANDOM_SEED = 42
# The settings tried by each training's search, after the active model's and the defaults (first found, first tried).
ALS_SEARCH_GRID: tuple[tuple[float, float], ...] = (
    (30.0, 1.4), (10.0, 1.4), (60.0, 1.4), (30.0, 0.7), (30.0, 3.0), (3.0, 1.0), (100.0, 2.0), (1.0, 0.5),
)  # fmt: skip
# Time-based holdout: the latest 20 to 50 % of each user's items (a share drawn per user), for users with at least
# HOLDOUT_MIN_ITEMS items; at most HOLDOUT_USERS_MAX of them are scored (a fixed, seeded sample).
HOLDOUT_SHARE_MIN = 0.2
HOLDOUT_SHARE_MAX = 0.5
HOLDOUT_MIN_ITEMS = 3
HOLDOUT_USERS_MAX = 5000
# Each setting the search tries is fitted on the scored users' pairs and those of at most this many others (a
# seeded sample): settings are compared as well on a few hundred thousand users' tastes, and at a million users a
# fit of everyone's took the whole budget for two settings. Smaller shops (every user fits) are unchanged.
SEARCH_FIT_USERS_MAX = 200_000
# The taste fold: this share of the scored users' items before their cut, drawn at random (seeded), hidden from
# the models the searches fit, for users with at least TASTE_MIN_ITEMS items there (fewer would
# leave too little to learn the user from). The searches rank settings by both folds, the future and taste.
TASTE_SHARE = 0.25
TASTE_MIN_ITEMS = 4
TOP_K = 10
RIDGE_PENALTY = 1.0
# An item with this many interacting users is half collaborative, half content.
BLEND_HALF_WEIGHT_USERS = 5.0
UPDATE_BATCH_SIZE = 2000
# From this many items, the vectors are written with the items' vector index dropped and built again afterwards
# (`_vectors_bulk_write`); below, row by row under the index, built again after. Only items count: the index is
# theirs alone.
VECTORS_BULK_MIN_ROWS = 50_000


@dataclass(frozen=True)
class TrainingReport:
    model_version: str
    items: int
    users: int
    interactions: int
    collaborative_items: int
    seconds: float
    # Whether the model serves (it passed the quality gate), the gate's figures and the settings it trained with.
    promoted: bool = True
    gate: object = None
    settings: dict[str, object] | None = None
    # The item-to-item model's search and gate (None: off).
    item_model: dict[str, object] | None = None


def _interaction_weights_sql() -> tuple[str, list[object]]:
    """The log's user-item pairs (`graph_app.state.log_reads.interaction_weights_sql`) of the weighted types."""
    weights = {
        name: kind.popularity_weight for name, kind in BUILT_IN_EVENT_TYPES.items() if kind.popularity_weight > 0
    }
    return interaction_weights_sql(weights=weights)


@lag_tolerant_reads()
def _items_features() -> tuple[list[str], Any]:
    """The catalog's ids (in id order) and content features (CSR, a row per item), each item's features computed
    as its row is read: a million items' ItemContent objects would hold a GB of the worker's memory."""
    ids: list[str] = []
    links: dict[int, list[tuple[str, str, float]]] = {}
    with read_connection().cursor() as cursor:
        cursor.execute(
            "SELECT l.item_id, e.kind, e.external_id, l.weight FROM graph_app_itementity l "
            "JOIN graph_app_entity e ON e.id = l.entity_id ORDER BY l.item_id, e.kind, e.external_id"
        )
        for item_pk, kind, external_id, weight in cursor.fetchall():
            links.setdefault(item_pk, []).append((kind, external_id, weight))

    def features() -> Iterator[dict[int, float]]:
        progress = Progress("embeddings: items' content read", total=None)
        for pk, external_id, title, description, category, attributes in (
            Item.objects.values_list("pk", "external_id", "title", "description", "category", "attributes")
            .order_by("external_id")
            .iterator(chunk_size=5000)
        ):
            ids.append(external_id)
            progress.advance()
            yield content_features(
                ItemContent(title, description, category, tuple(links.get(pk, ())), attributes or {})
            )
        progress.finish()

    matrix = feature_matrix(features())
    return ids, matrix


_SIX_DECIMALS = "{:.6f}".format


def _vector_literal(vector: np.ndarray) -> str:
    # Python floats (tolist) format about 2.5 times faster than numpy scalars, to the same text.
    return "[" + ",".join(map(_SIX_DECIMALS, vector.tolist())) + "]"


def _vectors_write(table: str, ids: list[str], vectors: np.ndarray, sources: list[str] | None = None) -> None:
    progress = Progress(f"embeddings: {table} rows written", total=len(ids))
    with connection.cursor() as cursor:
        for start in range(0, len(ids), UPDATE_BATCH_SIZE):
            progress.advance(min(UPDATE_BATCH_SIZE, len(ids) - start))
            chunk = slice(start, start + UPDATE_BATCH_SIZE)
            literals = [_vector_literal(vector) for vector in vectors[chunk]]
            if sources is None:
                cursor.execute(
                    f"UPDATE {table} AS t SET embedding = v.e::vector FROM unnest(%s::text[], %s::text[]) AS v(id, e) "
                    "WHERE t.external_id = v.id",
                    [ids[chunk], literals],
                )
            else:
                cursor.execute(
                    f"UPDATE {table} AS t SET embedding = v.e::vector, embedding_source = v.s "
                    "FROM unnest(%s::text[], %s::text[], %s::text[]) AS v(id, e, s) WHERE t.external_id = v.id",
                    [ids[chunk], literals, sources[chunk]],
                )
    progress.finish()


def _vectors_stage(name: str, ids: list[str], vectors: np.ndarray, sources: list[str] | None = None) -> str:
    """COPY the vectors into a temporary table of this session (id, vector, source); returns its name."""
    staging = f"embeddings_staging_{name}"
    progress = Progress(f"embeddings: {name} vectors staged", total=len(ids))
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {staging}")
        cursor.execute(f"CREATE TEMPORARY TABLE {staging} (id varchar(200) PRIMARY KEY, e vector, s varchar(20))")
        with cursor.copy(f"COPY {staging} (id, e, s) FROM STDIN") as copy:
            for row, item_id in enumerate(ids):
                copy.write_row((item_id, _vector_literal(vectors[row]), sources[row] if sources else None))
                progress.advance()
        cursor.execute(f"ANALYZE {staging}")
    progress.finish()
    return staging


def _vectors_apply(table: str, staging: str, *, with_sources: bool) -> None:
    """One UPDATE of `table` from a staging table (see _vectors_stage)."""
    started = time.monotonic()
    source = ", embedding_source = v.s" if with_sources else ""
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} AS t SET embedding = v.e{source} FROM {staging} AS v WHERE t.external_id = v.id"
        )
        cursor.execute(f"DROP TABLE {staging}")
    logger.info("graph.embeddings_written", extra={"table": table, "seconds": round(time.monotonic() - started, 1)})


class _LogLines:
    """A writable stream whose lines go to the log (item_vector_index_build's progress)."""

    def write(self, text: str) -> int:
        for line in text.splitlines():
            logger.info(line.strip())
        return len(text)


@dataclass(frozen=True)
class AlsSettings:
    """implicit's ALS hyperparameters (the factors are always EMBEDDING_DIMENSIONS)."""

    regularization: float = ALS_REGULARIZATION
    iterations: int = ALS_ITERATIONS
    # Confidence of an observed pair: 1 + alpha * log1p(its summed event weights); 1.0 is implicit's default.
    alpha: float = ALS_ALPHA
    random_state: int = ALS_RANDOM_SEED

    @classmethod
    def from_metrics(cls, metrics: dict[str, object] | None) -> AlsSettings | None:
        stored = (metrics or {}).get("settings")
        if not isinstance(stored, dict):
            return None
        return cls(**{name: stored[name] for name in ("regularization", "iterations", "alpha") if name in stored})


@dataclass(frozen=True)
class Interactions:
    """Every user-item pair of the log whose item is in the catalog: rows of `users`/`items` index `user_ids` and
    `item_ids` (the catalog, in id order), with the pair's summed event weight, its latest event (Unix seconds)
    and whether it includes a purchase."""

    user_ids: list[str]
    item_ids: list[str]
    users: np.ndarray
    items: np.ndarray
    weights: np.ndarray
    latest: np.ndarray
    purchased: np.ndarray

    def matrix(self, mask: np.ndarray | None = None, values: np.ndarray | None = None) -> Any:
        """users x items CSR matrix of the pairs in `mask` (all by default), with `values` (1 by default)."""
        from scipy import sparse

        chosen = np.ones(len(self.users), dtype=bool) if mask is None else mask
        data = np.ones(int(chosen.sum()), dtype=np.float32) if values is None else values[chosen]
        matrix = sparse.csr_matrix(
            (data.astype(np.float32), (self.users[chosen], self.items[chosen])),
            shape=(len(self.user_ids), len(self.item_ids)),
        )
        matrix.sort_indices()
        return matrix


@dataclass(frozen=True)
class AlsFactors:
    """Raw (not normalized) ALS factors: rows of `user_factors` follow `user_ids`, of `item_factors` the catalog."""

    user_ids: list[str]
    item_ids: list[str]
    user_factors: np.ndarray
    item_factors: np.ndarray
    users_per_item: np.ndarray


# A row of `_PAIRS_COPY_SQL`'s binary COPY: a field count, then each field's length and value (big-endian).
_PAIR_ROW = np.dtype(
    [("fields", ">i2"), ("user_length", ">i4"), ("user", ">i8"), ("item_length", ">i4"), ("item", ">i8"),
     ("weight_length", ">i4"), ("weight", ">f8"), ("latest_length", ">i4"), ("latest", ">f8"),
     ("purchased_length", ">i4"), ("purchased", "?")]
)  # fmt: skip
_COPY_HEADER_BYTES = 19  # signature (11), flags (4), header extension length (4)
_COPY_TRAILER_BYTES = 2
_PAIRS_COPY_SQL = """
    COPY (SELECT (dense_rank() OVER (ORDER BY user_id) - 1)::int8, item::int8, weight::float8,
                 coalesce(latest, 0)::float8, coalesce(purchased, false)
          FROM interactions_pairs) TO STDOUT (FORMAT binary)
"""


def interactions_load(item_ids: list[str] | None = None) -> Interactions:
    """The log's user-item pairs (see Interactions), for the catalog `item_ids` (read when not given), in (user,
    item) order.

    PostgreSQL groups the pairs into a temporary table and numbers the users; the numbers come back as a binary
    COPY read straight into numpy arrays. Rows fetched and converted one by one in Python took 150 s for 12.7 M
    pairs."""
    if item_ids is None:
        item_ids = list(Item.objects.order_by("external_id").values_list("external_id", flat=True))
    sql, params = _interaction_weights_sql()
    progress = Progress("interactions_load: pairs read", total=None)
    buffer = bytearray()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL work_mem = '256MB'")  # the sorts of millions of pairs, in memory
        # Dropped here, not on commit: inside an outer transaction (a test's) the commit is not this block's.
        cursor.execute("DROP TABLE IF EXISTS interactions_pairs")
        cursor.execute(f"CREATE TEMPORARY TABLE interactions_pairs AS {sql}", params)
        cursor.execute("SELECT user_id FROM interactions_pairs GROUP BY 1 ORDER BY 1")
        user_ids = [user_id for (user_id,) in cursor.fetchall()]
        with cursor.copy(_PAIRS_COPY_SQL) as copy:
            for block in copy:
                buffer += block
                progress.advance(len(block) // _PAIR_ROW.itemsize)  # about: the header is a few bytes
        cursor.execute("DROP TABLE interactions_pairs")
        cursor.execute("SELECT id, external_id FROM graph_app_item")
        item_rows = cursor.fetchall()
    progress.finish()
    count = (len(buffer) - _COPY_HEADER_BYTES - _COPY_TRAILER_BYTES) // _PAIR_ROW.itemsize
    rows = np.frombuffer(buffer, dtype=_PAIR_ROW, offset=_COPY_HEADER_BYTES, count=count)
    if not (rows["fields"] == len(_PAIR_ROW.names) // 2).all():
        raise RuntimeError("interactions_load: unexpected COPY row layout")
    item_index = {item_id: index for index, item_id in enumerate(item_ids)}
    index_of_row = np.full(max((pk for pk, _ in item_rows), default=0) + 1, -1, dtype=np.int64)
    for pk, external_id in item_rows:
        index_of_row[pk] = item_index.get(external_id, -1)
    items = index_of_row[rows["item"]]
    kept = items >= 0  # an item outside `item_ids`
    users = rows["user"][kept].astype(np.int64)
    present = np.unique(users)
    if len(present) < len(user_ids):  # users whose every pair was left out
        user_ids = [user_ids[code] for code in present.tolist()]
        users = np.searchsorted(present, users)
    order = np.lexsort((items[kept], users))
    result = Interactions(
        user_ids=user_ids,
        item_ids=list(item_ids),
        users=users[order],
        items=items[kept][order],
        weights=rows["weight"][kept][order].astype(np.float32),
        latest=rows["latest"][kept][order].astype(np.float64),
        purchased=rows["purchased"][kept][order].astype(bool),
    )
    del buffer
    return result


def als_fit(
    interactions: Interactions, als: AlsSettings, mask: np.ndarray | None = None, *, start: AlsFactors | None = None
) -> AlsFactors:
    """implicit's ALS on the log1p-weighted user-item matrix of the pairs in `mask` (`training_threads_used`);
    from `start`'s item factors (same catalog) for ALS_WARM_ITERATIONS when given."""
    import implicit

    dimensions = settings.EMBEDDING_DIMENSIONS
    user_items = interactions.matrix(mask, np.log1p(interactions.weights))
    users_per_item = np.asarray((user_items > 0).sum(axis=0)).ravel().astype(np.float32)
    item_factors = np.zeros((len(interactions.item_ids), dimensions), dtype=np.float32)
    user_factors = np.zeros((len(interactions.user_ids), dimensions), dtype=np.float32)
    if user_items.nnz:
        iterations = als.iterations if start is None else min(als.iterations, ALS_WARM_ITERATIONS)
        progress = Progress(f"als_fit: iterations ({user_items.nnz:,} pairs)", total=iterations)
        # implicit runs its own threads, each calling BLAS: one BLAS thread each (it warns otherwise). Its check
        # also counts faiss's OpenBLAS, which follows OpenMP's thread count and which implicit never calls: that
        # one warning, in a process that loaded faiss (the similar lists), is noise.
        with training_threads_used(blas=False) as threads, warnings.catch_warnings():
            warnings.filterwarnings("ignore", "OpenBLAS is configured to use", RuntimeWarning, "implicit")
            model = implicit.als.AlternatingLeastSquares(
                factors=dimensions, regularization=als.regularization, alpha=als.alpha, iterations=iterations,
                random_state=als.random_state, calculate_training_loss=False, num_threads=threads,
            )  # fmt: skip
            if start is not None:
                # Users are solved first in each iteration, from the item factors: only those need a start.
                model.item_factors = np.array(start.item_factors, dtype=np.float32, order="C")
                model.user_factors = np.zeros((len(interactions.user_ids), dimensions), dtype=np.float32)
            model.fit(user_items, show_progress=False, callback=lambda *_: progress.advance())
        progress.finish()
        item_factors = np.asarray(model.item_factors)[:, :dimensions]
        user_factors = np.asarray(model.user_factors)[:, :dimensions]
    return AlsFactors(interactions.user_ids, interactions.item_ids, user_factors, item_factors, users_per_item)


@dataclass(frozen=True)
class Holdout:
    """A time-based holdout: `held_out` marks each user's latest pairs; `users` are the scored users (a seeded
    sample of those with enough history); `cut` is each user's first held-out time (Unix seconds, by user row; NaN
    for users without a holdout); `taste` marks the scored users' taste fold (TASTE_SHARE of their items before
    the cut, at random, for users with at least TASTE_MIN_ITEMS there)."""

    held_out: np.ndarray
    users: np.ndarray
    cut: np.ndarray
    taste: np.ndarray

    @property
    def train(self) -> np.ndarray:
        return ~self.held_out

    @property
    def search_train(self) -> np.ndarray:
        """What the searches fit on: neither fold."""
        return ~self.held_out & ~self.taste


def holdout_split(interactions: Interactions, *, seed: int | None = None) -> Holdout:
    """Hold out the most recent slice of each user's history: a share of the user's items drawn between
    HOLDOUT_SHARE_MIN and HOLDOUT_SHARE_MAX (at least one), for users with at least HOLDOUT_MIN_ITEMS items (ties:
    item order). Scored: at most HOLDOUT_USERS_MAX of them, a sample fixed by `seed` (TRAINING_SEED by default).
    A varied share makes the label the user's future over hours to months, not only the next few items of a
    session: serving shows a returning shopper what they will want from now on. The scored users' taste fold
    (see Holdout) is drawn too."""
    seed = settings.TRAINING_SEED if seed is None else seed
    count = len(interactions.users)
    held_out = np.zeros(count, dtype=bool)
    cut = np.full(len(interactions.user_ids), np.nan)
    # Each user's pairs in time order, as one array: a group per user (array operations, not a loop per user).
    order = np.lexsort((interactions.items, interactions.latest, interactions.users))
    starts = np.concatenate([[0], np.flatnonzero(np.diff(interactions.users[order])) + 1]) if count else np.zeros(0)
    starts = starts.astype(np.int64)
    sizes = np.diff(np.append(starts, count))
    group_users = interactions.users[order[starts]] if count else np.zeros(0, dtype=np.int64)
    draws = np.fromiter(
        (zlib.crc32(f"{seed}:{interactions.user_ids[user]}".encode()) / 2**32 for user in group_users.tolist()),
        dtype=np.float64, count=len(group_users),
    )  # fmt: skip
    shares = HOLDOUT_SHARE_MIN + (HOLDOUT_SHARE_MAX - HOLDOUT_SHARE_MIN) * draws
    held_counts = np.maximum(1, np.round(shares * sizes)).astype(np.int64)
    chosen = (sizes >= HOLDOUT_MIN_ITEMS) & (held_counts < sizes)
    first_held = starts + sizes - held_counts  # in `order`; the group's earliest held pair, so its cut
    position = np.arange(count) - np.repeat(starts, sizes)
    held_out[order[np.repeat(chosen, sizes) & (position >= np.repeat(sizes - held_counts, sizes))]] = True
    users = group_users[chosen].astype(np.int64)
    cut[users] = interactions.latest[order[first_held[chosen]]]
    if len(users) > HOLDOUT_USERS_MAX:
        generator = np.random.default_rng(seed)
        users = np.sort(generator.choice(users, HOLDOUT_USERS_MAX, replace=False))
    # Users outside the sample keep their latest items out of training too: every candidate fits on the same rows.
    before_cut = np.isin(interactions.users, users) & ~held_out
    enough = np.bincount(interactions.users[before_cut], minlength=len(interactions.user_ids)) >= TASTE_MIN_ITEMS
    # Drawn over the pairs in (user, item) order, whatever order they came in: the same log gives the same fold.
    # Not a crc32 of each pair: crc32 is linear, and picked the same items for whole groups of users.
    candidates = np.flatnonzero(before_cut & enough[interactions.users])
    candidates = candidates[np.lexsort((interactions.items[candidates], interactions.users[candidates]))]
    taste = np.zeros(count, dtype=bool)
    taste[candidates] = np.random.default_rng([seed, 1]).random(len(candidates)) < TASTE_SHARE
    return Holdout(held_out=held_out, users=users, cut=cut, taste=taste)


def top_k_items(
    user_vectors: np.ndarray, item_vectors: np.ndarray, exclude: Any, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """(item indexes, scores) of each user's k best items by dot product, best first, leaving out the items of
    `exclude` (users x items CSR, one row per user vector); -1 where fewer."""
    from implicit.cpu.topk import topk

    indexes, scores = topk(
        np.ascontiguousarray(item_vectors, dtype=np.float32), np.ascontiguousarray(user_vectors, dtype=np.float32),
        min(k, item_vectors.shape[0]), filter_query_items=exclude, num_threads=training_threads(),
    )  # fmt: skip
    valid = (scores > FILTERED_SCORE) & (indexes >= 0)  # filtered items come back with float32's lowest score
    return np.where(valid, indexes, -1), np.where(valid, scores, 0.0)


def ndcg_per_user(recommended: np.ndarray, relevant: Any, k: int = TOP_K) -> np.ndarray:
    """nDCG@k with binary relevance of each row of `recommended` (item indexes, -1 padding) against the same row
    of `relevant` (CSR); a user with no hit scores 0."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    scores = np.zeros(len(recommended))
    for row in range(len(recommended)):
        wanted = relevant.indices[relevant.indptr[row] : relevant.indptr[row + 1]]
        if not len(wanted):
            continue
        hits = np.isin(recommended[row, :k], wanted)
        ideal = float(discounts[: min(len(wanted), k)].sum())
        scores[row] = float(discounts[: len(hits)][hits].sum()) / ideal
    return scores


def ndcg_at_k(recommended: np.ndarray, relevant: Any, k: int = TOP_K) -> float:
    """The mean of `ndcg_per_user`."""
    return float(ndcg_per_user(recommended, relevant, k).mean()) if len(recommended) else 0.0


def popularity_scores(interactions: Interactions, mask: np.ndarray) -> np.ndarray:
    """Distinct users per item among the pairs in `mask`: the popularity baseline every gate compares with."""
    return np.bincount(interactions.items[mask], minlength=len(interactions.item_ids)).astype(np.float32)


@dataclass(frozen=True)
class HoldoutScores:
    """A model's figures on the holdout's scored users: nDCG@10 on the future (the gate's figure) and on the taste
    fold; `per_user` is each user's mean of the two, in holdout.users order (what the searches rank and test)."""

    ndcg: float
    popularity_ndcg: float
    per_user: np.ndarray
    taste_ndcg: float | None = None


def holdout_scores(interactions: Interactions, holdout: Holdout, found: np.ndarray, popularity: float) -> HoldoutScores:
    """The figures of each scored user's top 10 `found` (item indexes, holdout.users order), fitted on
    holdout.search_train with those items left out."""
    users = holdout.users
    future = ndcg_per_user(found, interactions.matrix(holdout.held_out)[users])
    taste = ndcg_per_user(found, interactions.matrix(holdout.taste)[users])
    return HoldoutScores(
        round(float(future.mean()), 6) if len(users) else 0.0, popularity, (future + taste) / 2,
        round(float(taste.mean()), 6) if len(users) else 0.0,
    )  # fmt: skip


def holdout_popularity(interactions: Interactions, holdout: Holdout) -> float:
    """nDCG@10 on the future of the most popular items the user has not seen (what every gate compares with)."""
    users = holdout.users
    seen = interactions.matrix(holdout.search_train)[users]
    popularity = popularity_scores(interactions, holdout.search_train)
    # A user's best unseen items are among the (10 + items they saw) most popular: only those are searched, not
    # the whole catalog (at a million items that was minutes a training).
    depth = min(len(popularity), TOP_K + int(np.diff(seen.indptr).max(initial=0)))
    head = np.lexsort((np.arange(len(popularity)), -popularity))[:depth]
    popular, _ = top_k_items(np.ones((len(users), 1), dtype=np.float32), popularity[head, None], seen[:, head], TOP_K)
    popular = np.where(popular >= 0, head[np.maximum(popular, 0)], -1)
    return round(ndcg_at_k(popular, interactions.matrix(holdout.held_out)[users]), 6)


def holdout_evaluate(
    interactions: Interactions, holdout: Holdout, factors: AlsFactors, *, popularity: float | None = None
) -> HoldoutScores:
    """The figures (see HoldoutScores) of the factors' top 10, fitted on holdout.search_train, and popularity's
    (`holdout_popularity`, computed when not given: it is the same for every model on the holdout)."""
    users = holdout.users
    seen = interactions.matrix(holdout.search_train)[users]
    found, _ = top_k_items(factors.user_factors[users], factors.item_factors, seen, TOP_K)
    if popularity is None:
        popularity = holdout_popularity(interactions, holdout)
    return holdout_scores(interactions, holdout, found, popularity)


# A setting replaces the incumbent (the active one, or the defaults) only when its gain over it, user by user,
# is this many standard errors above zero: a difference within the holdout's noise is no reason to change.
SEARCH_MIN_GAIN_SE = 2.0


def significantly_better(candidate: np.ndarray, incumbent: np.ndarray) -> bool:
    """Whether the paired per-user gain of `candidate` over `incumbent` is above SEARCH_MIN_GAIN_SE errors."""
    gains = candidate - incumbent
    if len(gains) < 2:
        return bool(gains.mean() > 0) if len(gains) else False
    error = float(gains.std(ddof=1)) / math.sqrt(len(gains))
    return float(gains.mean()) > SEARCH_MIN_GAIN_SE * error and float(gains.mean()) > 0


def _search_grid(active: AlsSettings | None) -> list[AlsSettings]:
    grid = [active] if active is not None else []
    grid += [AlsSettings()] + [AlsSettings(regularization=r, alpha=a) for r, a in ALS_SEARCH_GRID]
    return list(dict.fromkeys(grid))


def seeded_sample(users: np.ndarray, limit: int) -> np.ndarray:
    """At most `limit` of `users`, sorted: a sample fixed by TRAINING_SEED (all of them when they fit)."""
    if len(users) <= limit:
        return users
    return np.sort(np.random.default_rng(settings.TRAINING_SEED).choice(users, limit, replace=False))


def search_fit_users(interactions: Interactions, users: np.ndarray, *, limit: int) -> np.ndarray:
    """The pairs of `users` and of at most `limit` others, a sample fixed by TRAINING_SEED (every pair when all
    fit): what a search or a ranker's candidate set fits on in a large shop."""
    others = np.setdiff1d(np.arange(len(interactions.user_ids)), users)
    if len(others) <= limit:
        return np.ones(len(interactions.users), dtype=bool)
    return np.isin(interactions.users, np.concatenate([users, seeded_sample(others, limit)]))


@dataclass(frozen=True)
class SettingsSearch:
    chosen: AlsSettings
    # Each tried setting's held-out nDCG@10, in the order tried.
    tried: list[dict[str, float]]
    gate: dict[str, object]
    # The chosen settings' fit on the searches' training part: the final fit starts from it.
    factors: AlsFactors | None = None


def als_settings_search(
    interactions: Interactions, holdout: Holdout, *, active: AlsSettings | None, search: bool, budget_seconds: float
) -> SettingsSearch:
    """Fit each setting of the grid (the active and the default ones first) on the training part of the holdout
    (without the taste fold), until the time budget is spent, and keep the best by the mean of its future and taste
    nDCG@10 among those significantly better than the first on it (SEARCH_MIN_GAIN_SE); with `search` off, only
    the default settings (or the active ones) are scored. Both folds count because the shelf serves both: what a
    shopper buys next and what they like at all (the ranker learns from both kinds of label too); the future alone
    favoured settings that lean towards popular items. The gate's figures (the future's) compare the chosen
    settings with popularity and the active settings on the same users."""
    started = time.monotonic()
    grid = _search_grid(active) if search else [active or AlsSettings()]
    tried: list[dict[str, float]] = []
    incumbent: HoldoutScores | None = None
    best: tuple[HoldoutScores, AlsSettings, AlsFactors] | None = None
    popularity_ndcg = holdout_popularity(interactions, holdout)
    active_ndcg: float | None = None
    # One line per setting tried; the search stops at its budget, so the time left is at most what remains of it.
    progress = Progress(f"als search ({budget_seconds:.0f} s budget): settings tried", total=len(grid), every_seconds=0)
    fitted = holdout.search_train & search_fit_users(interactions, holdout.users, limit=SEARCH_FIT_USERS_MAX)
    fit_seconds = 0.0
    for candidate in grid:
        # A fit that would end past the budget is not started (the first always is): the budget bounds the search.
        if tried and time.monotonic() - started + fit_seconds > budget_seconds:
            break
        fit_started = time.monotonic()
        factors = als_fit(interactions, candidate, fitted)
        scores = holdout_evaluate(interactions, holdout, factors, popularity=popularity_ndcg)
        fit_seconds = time.monotonic() - fit_started
        progress.advance()
        tried.append({**asdict(candidate), "ndcg@10": scores.ndcg, "taste_ndcg@10": scores.taste_ndcg})
        if candidate == active:
            active_ndcg = scores.ndcg
        if incumbent is None:
            incumbent = scores  # the active settings, or the defaults: what must be beaten, beyond noise
            best = (scores, candidate, factors)
        elif (
            best is not None
            and scores.per_user.mean() > best[0].per_user.mean()
            and significantly_better(scores.per_user, incumbent.per_user)
        ):
            best = (scores, candidate, factors)
    assert best is not None
    gate: dict[str, object] = {
        "users": len(holdout.users),
        "ndcg@10": best[0].ndcg,
        "taste_ndcg@10": best[0].taste_ndcg,
        "popularity_ndcg@10": popularity_ndcg,
        "active_ndcg@10": active_ndcg,
        "passed": bool(best[0].ndcg > popularity_ndcg),
        "seconds": round(time.monotonic() - started, 2),
    }
    return SettingsSearch(best[1], tried, gate, best[2])


def _vectors_bulk_write(
    item_ids: list[str],
    item_vectors: np.ndarray,
    sources: list[str],
    user_ids: list[str],
    user_vectors: np.ndarray,
    *,
    projection: np.ndarray,
    metrics: dict[str, object],
) -> ModelVersion:
    """Write a large catalog's and its users' vectors with the items' vector index away, and register the model.

    One UPDATE from a staging table, then a concurrent build of the index around the new vectors (its lists are
    centred on the vectors it is built from). Serving reads on meanwhile: it skips its vector searches until the
    index is back, and sees the old vectors or the new ones (one transaction), never a mix."""

    items_staging = _vectors_stage("items", item_ids, item_vectors, sources)
    users_staging = _vectors_stage("users", user_ids, user_vectors)
    item_vector_index_drop()  # concurrently: serving's reads are not blocked
    try:
        with transaction.atomic():
            _vectors_apply("graph_app_item", items_staging, with_sources=True)
            _vectors_apply("graph_app_shopper", users_staging, with_sources=False)
            model_version = model_version_register(
                kind=ModelVersion.Kind.EMBEDDINGS, arrays={"content_projection": projection}, metrics=metrics
            )
    finally:
        item_vector_index_build(progress=_LogLines())  # type: ignore[arg-type]
    return model_version


def _item_vectors(factors: AlsFactors, content: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(serving item vectors, content projection, which items have history): unit-length collaborative vectors
    blended with content vectors by how much history each item has."""
    users_per_item = factors.users_per_item
    collaborative = normalize_rows(factors.item_factors)
    has_history = users_per_item > 0
    if has_history.any():
        # Ridge regression from content features to collaborative vectors, fitted on items with history.
        x = content[has_history]
        gram = (x.T @ x).toarray() + RIDGE_PENALTY * np.eye(content.shape[1], dtype=np.float32)
        projection = np.linalg.solve(gram, (x.T @ collaborative[has_history])).astype(np.float32)
    else:
        from graph_app.embeddings import random_projection

        projection = random_projection()
    content_vectors = normalize_rows(np.asarray(content @ projection))
    blend = (users_per_item / (users_per_item + BLEND_HALF_WEIGHT_USERS))[:, None]
    return normalize_rows(blend * collaborative + (1 - blend) * content_vectors), projection, has_history


def item_content_matrix() -> Any:
    """The catalog's content features (items in id order x CONTENT_FEATURE_BUCKETS, CSR)."""
    return _items_features()[1]


def item_vectors_for(factors: AlsFactors, content: Any = None) -> np.ndarray:
    """The serving item vectors of these factors (what `embeddings_train` stores), for the catalog's items;
    `content`: the catalog's `item_content_matrix()`, read when not given."""
    return _item_vectors(factors, item_content_matrix() if content is None else content)[0]


def _active_settings() -> AlsSettings | None:
    active = model_version_active(kind=ModelVersion.Kind.EMBEDDINGS)
    return AlsSettings.from_metrics(active.metrics) if active is not None else None


def _item_model_search(interactions: Interactions, holdout: Holdout, *, search: bool) -> ItemModelSearch | None:
    """The item-to-item model's λ, searched on the embeddings' holdout (None: the model is off, or nobody has a
    holdout)."""
    if settings.ITEM_MODEL_MAX_ITEMS <= 0 or not len(holdout.users):
        return None
    return item_model_search(
        interactions, holdout, active=active_item_model_regularization(), search=search,
        budget_seconds=settings.TRAINING_SEARCH_SECONDS,
    )  # fmt: skip


def active_item_model_regularization() -> float | None:
    """The serving item model's λ (None before the first training, or when it serves no lists)."""
    active = model_version_active(kind=ModelVersion.Kind.EMBEDDINGS)
    stored = active.metrics.get("item_model") if active is not None else None
    value = stored.get("regularization") if isinstance(stored, dict) else None
    return float(value) if isinstance(value, int | float) else None


def active_als_settings() -> AlsSettings:
    """The settings of the serving embeddings (the defaults before the first training)."""
    return _active_settings() or AlsSettings()


def embeddings_train(*, als: AlsSettings | None = None, search: bool | None = None) -> TrainingReport:
    """Train on the whole log with the settings the holdout search chose (or `als`), and make the result the
    serving embeddings model if it passes the quality gate (beats popularity on the held-out slice)."""
    started = time.monotonic()
    item_ids, content = _items_features()
    interactions = interactions_load(item_ids)
    holdout = holdout_split(interactions)
    search_on = settings.TRAINING_SEARCH if search is None else search
    chosen = als or AlsSettings()
    found: SettingsSearch | None = None
    if als is None and len(holdout.users):
        found = als_settings_search(
            interactions, holdout, active=_active_settings(), search=search_on,
            budget_seconds=settings.TRAINING_SEARCH_SECONDS,
        )  # fmt: skip
        chosen = found.chosen
    item_model = _item_model_search(interactions, holdout, search=search_on and als is None)
    factors = als_fit(interactions, chosen, start=found.factors if found is not None else None)
    item_vectors, projection, has_history = _item_vectors(factors, content)
    user_vectors = normalize_rows(factors.user_factors)
    user_ids = factors.user_ids
    promoted = found is None or bool(found.gate["passed"])
    metrics: dict[str, object] = {
        "items": len(item_ids),
        "users": len(user_ids),
        "interactions": len(interactions.users),
        "collaborative_items": int(has_history.sum()),
        "settings": asdict(chosen),
        "search": {"enabled": search_on and als is None, "tried": found.tried if found else []},
        "gate": found.gate if found else {"passed": True, "skipped": "no user has enough history for a holdout"},
        "item_model": asdict(item_model) if item_model is not None else None,
    }
    if not promoted:
        # Stored for staff to look at, never served: the active model (or popularity, without one) keeps serving.
        buffer = io.BytesIO()
        np.savez_compressed(buffer, content_projection=projection)
        version = model_version_create(kind=ModelVersion.Kind.EMBEDDINGS, artifact=buffer.getvalue(), metrics=metrics)
        logger.warning(
            "graph.embeddings_not_promoted", extra={"version": version.version, **(found.gate if found else {})}
        )
        return TrainingReport(
            version.version, len(item_ids), len(user_ids), len(interactions.users), int(has_history.sum()),
            round(time.monotonic() - started, 3), promoted=False, gate=metrics["gate"], settings=asdict(chosen),
            item_model=asdict(item_model) if item_model is not None else None,
        )  # fmt: skip
    sources = ["collaborative" if history else "content" for history in has_history]
    if len(item_ids) < VECTORS_BULK_MIN_ROWS:
        with transaction.atomic():
            _vectors_write("graph_app_item", item_ids, item_vectors, sources)
            _vectors_write("graph_app_shopper", user_ids, user_vectors)
            model_version = model_version_register(
                kind=ModelVersion.Kind.EMBEDDINGS, arrays={"content_projection": projection}, metrics=metrics
            )
        # The index's lists are centred on the vectors it was built from: built again around the new ones (seconds
        # at this size).
        item_vector_index_drop()
        item_vector_index_build()
    else:
        model_version = _vectors_bulk_write(
            item_ids, item_vectors, sources, user_ids, user_vectors, projection=projection, metrics=metrics
        )
    # The feature store reads embeddings from Redis: copy the new ones there once they are committed.
    catalog_items_rebuild()
    # Retrieval's "similar to your recent items" reads each item's nearest items, computed once per training.
    # Derived data: a failure keeps the previous lists (retrieval falls back to pgvector for items without one)
    # and must not fail a training that is already committed.
    try:
        similar_lists_publish(item_ids=item_ids, vectors=item_vectors)
    except Exception:
        logger.exception("graph.similar_lists_failed")
    # Retrieval's "user_vector" source reads each user's best items by the raw factors' dot product (what the
    # holdout scored; unit-length vectors lose the popularity it carries), without what the user already bought,
    # computed once per training (the most active users first, up to USER_NEAREST_LISTS_MAX_USERS).
    activity = np.bincount(interactions.users, minlength=len(user_ids))
    order = np.lexsort((np.arange(len(user_ids)), -activity))
    bought = interactions.matrix(interactions.purchased)
    try:
        user_lists_publish(
            user_ids=[user_ids[index] for index in order], user_vectors=factors.user_factors[order],
            item_ids=item_ids, item_vectors=factors.item_factors, exclude=bought[order],
        )  # fmt: skip
    except Exception:
        logger.exception("graph.user_lists_failed")
    # Retrieval's "item_model" source: each user's best items by the item-to-item model, for the same users.
    try:
        regularization = item_model.regularization if item_model is not None else None
        item_model_publish(
            model=item_model_fit(interactions, None, regularization=regularization) if regularization else None,
            interactions=interactions, user_order=order, exclude=bought,
        )  # fmt: skip
    except Exception:
        logger.exception("graph.item_model_lists_failed")
    report = TrainingReport(
        model_version=model_version.version,
        items=len(item_ids),
        users=len(user_ids),
        interactions=len(interactions.users),
        collaborative_items=int(has_history.sum()),
        seconds=round(time.monotonic() - started, 3),
        promoted=True,
        gate=metrics["gate"],
        settings=asdict(chosen),
        item_model=asdict(item_model) if item_model is not None else None,
    )
    logger.info("graph.embeddings_trained", extra=report.__dict__)
    return report
