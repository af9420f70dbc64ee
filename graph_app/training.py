"""Learning item and user embeddings from the event log (control plane: ORM and SQL are fine here).

Collaborative vectors come from implicit's ALS on the weighted user-item matrix; a ridge regression maps
content features onto them so that items with little or no history get a vector in the same space. An item's
final vector blends the two by how much history it has.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
from django.conf import settings
from django.db import connection, transaction

from graph_app.embeddings import ItemContent, content_features, feature_matrix, normalize_rows
from graph_app.models import Item
from graph_app.online import catalog_items_rebuild
from graph_app.similar_lists import similar_lists_publish
from graph_app.user_lists import user_lists_publish
from scoring_app.models import ModelVersion
from scoring_app.services import model_version_register
from signals_app.event_types import BUILT_IN_EVENT_TYPES

logger = logging.getLogger(__name__)

ALS_ITERATIONS = 15
ALS_REGULARIZATION = 0.05
ALS_RANDOM_SEED = 42
RIDGE_PENALTY = 1.0
# An item with this many interacting users is half collaborative, half content.
BLEND_HALF_WEIGHT_USERS = 5.0
UPDATE_BATCH_SIZE = 2000


@dataclass(frozen=True)
class TrainingReport:
    model_version: str
    items: int
    users: int
    interactions: int
    collaborative_items: int
    seconds: float


def _interaction_weights_sql() -> tuple[str, list[object]]:
    types = [name for name, kind in BUILT_IN_EVENT_TYPES.items() if kind.popularity_weight > 0]
    weights = [BUILT_IN_EVENT_TYPES[name].popularity_weight for name in types]
    sql = """
        SELECT e.user_id, e.item_id, sum(w.weight)
        FROM signals_app_event e
        JOIN unnest(%s::text[], %s::float8[]) AS w(type, weight) ON w.type = e.type
        JOIN graph_app_item i ON i.external_id = e.item_id
        WHERE e.user_id <> '' AND e.item_id <> ''
        GROUP BY e.user_id, e.item_id
    """
    return sql, [types, weights]


def _items_content() -> tuple[list[str], list[ItemContent]]:
    ids: list[str] = []
    contents: list[ItemContent] = []
    links: dict[int, list[tuple[str, str, float]]] = {}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT l.item_id, e.kind, e.external_id, l.weight FROM graph_app_itementity l "
            "JOIN graph_app_entity e ON e.id = l.entity_id"
        )
        for item_pk, kind, external_id, weight in cursor.fetchall():
            links.setdefault(item_pk, []).append((kind, external_id, weight))
    for pk, external_id, title, description, category, attributes in Item.objects.values_list(
        "pk", "external_id", "title", "description", "category", "attributes"
    ).iterator(chunk_size=5000):
        ids.append(external_id)
        contents.append(ItemContent(title, description, category, tuple(links.get(pk, ())), attributes or {}))
    return ids, contents


def _vector_literal(vector: np.ndarray) -> str:
    return "[" + ",".join(f"{value:.6f}" for value in vector) + "]"


def _vectors_write(table: str, ids: list[str], vectors: np.ndarray, sources: list[str] | None = None) -> None:
    with connection.cursor() as cursor:
        for start in range(0, len(ids), UPDATE_BATCH_SIZE):
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


@dataclass(frozen=True)
class AlsSettings:
    """implicit's ALS hyperparameters (the factors are always EMBEDDING_DIMENSIONS); the defaults are the platform's.
    The offline evaluation passes its own, tuned on a validation split."""

    regularization: float = ALS_REGULARIZATION
    iterations: int = ALS_ITERATIONS
    # Confidence of an observed pair: 1 + alpha * log1p(its summed event weights); 1.0 is implicit's default.
    alpha: float = 1.0
    random_state: int = ALS_RANDOM_SEED


@dataclass(frozen=True)
class AlsFactors:
    """Raw (not normalized) ALS factors: rows of `user_factors` follow `user_ids`, of `item_factors` the catalog."""

    user_ids: list[str]
    item_ids: list[str]
    user_factors: np.ndarray
    item_factors: np.ndarray
    users_per_item: np.ndarray


def interactions_load() -> list[tuple[str, str, float]]:
    """(user, item, summed event weight) of every user-item pair of the log whose item is in the catalog."""
    sql, params = _interaction_weights_sql()
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def als_factors_fit(*, item_ids: list[str], rows: list[tuple[str, str, float]], als: AlsSettings) -> AlsFactors:
    """implicit's ALS on the log1p-weighted user-item matrix (one BLAS thread)."""
    import implicit
    from scipy import sparse
    from threadpoolctl import threadpool_limits

    dimensions = settings.EMBEDDING_DIMENSIONS
    item_index = {item_id: index for index, item_id in enumerate(item_ids)}
    user_ids = sorted({user_id for user_id, _, _ in rows})
    user_index = {user_id: index for index, user_id in enumerate(user_ids)}
    item_factors = np.zeros((len(item_ids), dimensions), dtype=np.float32)
    users_per_item = np.zeros(len(item_ids), dtype=np.float32)
    user_factors = np.zeros((len(user_ids), dimensions), dtype=np.float32)
    if rows:
        user_items = sparse.csr_matrix(
            (
                np.log1p(np.asarray([weight for _, _, weight in rows], dtype=np.float32)),
                ([user_index[user] for user, _, _ in rows], [item_index[item] for _, item, _ in rows]),
            ),
            shape=(len(user_ids), len(item_ids)),
        )
        users_per_item = np.asarray((user_items > 0).sum(axis=0)).ravel().astype(np.float32)
        model = implicit.als.AlternatingLeastSquares(
            factors=dimensions,
            regularization=als.regularization,
            alpha=als.alpha,
            iterations=als.iterations,
            random_state=als.random_state,
            calculate_training_loss=False,
        )
        with threadpool_limits(1):
            model.fit(user_items, show_progress=False)
        item_factors = np.asarray(model.item_factors)[:, :dimensions]
        user_factors = np.asarray(model.user_factors)[:, :dimensions]
    return AlsFactors(user_ids, list(item_ids), user_factors, item_factors, users_per_item)


def embeddings_train(*, als: AlsSettings | None = None) -> TrainingReport:
    """Train on the whole log and make the result the serving embeddings model."""
    return embeddings_train_with_factors(als=als)[0]


def embeddings_train_with_factors(*, als: AlsSettings | None = None) -> tuple[TrainingReport, AlsFactors]:
    """embeddings_train, also returning the raw ALS factors (the offline evaluation scores with them)."""
    started = time.monotonic()
    item_ids, contents = _items_content()
    rows = interactions_load()
    content = feature_matrix(content_features(item) for item in contents)
    factors = als_factors_fit(item_ids=item_ids, rows=rows, als=als or AlsSettings())
    user_ids, users_per_item = factors.user_ids, factors.users_per_item
    collaborative = normalize_rows(factors.item_factors)
    user_vectors = normalize_rows(factors.user_factors)

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
    item_vectors = normalize_rows(blend * collaborative + (1 - blend) * content_vectors)
    sources = ["collaborative" if history else "content" for history in has_history]

    with transaction.atomic():
        _vectors_write("graph_app_item", item_ids, item_vectors, sources)
        _vectors_write("graph_app_shopper", user_ids, user_vectors)
        model_version = model_version_register(
            kind=ModelVersion.Kind.EMBEDDINGS,
            arrays={"content_projection": projection},
            metrics={
                "items": len(item_ids),
                "users": len(user_ids),
                "interactions": len(rows),
                "collaborative_items": int(has_history.sum()),
            },
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
    # Retrieval's "user_vector" source reads each user's nearest items, computed once per training (the most active
    # users first, up to USER_NEAREST_LISTS_MAX_USERS). Derived data too: a failure falls back to pgvector.
    try:
        interactions = Counter(user for user, _, _ in rows)
        order = sorted(range(len(user_ids)), key=lambda index: -interactions[user_ids[index]])
        user_lists_publish(
            user_ids=[user_ids[index] for index in order], user_vectors=user_vectors[order],
            item_ids=item_ids, item_vectors=item_vectors,
        )  # fmt: skip
    except Exception:
        logger.exception("graph.user_lists_failed")
    report = TrainingReport(
        model_version=model_version.version,
        items=len(item_ids),
        users=len(user_ids),
        interactions=len(rows),
        collaborative_items=int(has_history.sum()),
        seconds=round(time.monotonic() - started, 3),
    )
    logger.info("graph.embeddings_trained", extra=report.__dict__)
    return report, factors
