"""Training-serving skew of the retrieval features: the candidate set serving builds for a user now, against the
same features computed the way training computes them (`scoring_app.training.holdout_queries`): the user's recent
and bought items read from the PostgreSQL log, the precomputed lists the sources read, the one definition
(`retrieval_features`). The `graph` source is serving's only (training builds no graph candidates): not compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from graph_app.interface import (
    DEFAULT_TOLERANCE,
    RETRIEVAL_FEATURE_NAMES,
    FeatureSkew,
    item_ids_in_stock,
    retrieval_features,
    skew_compare,
)
from graph_app.state.interface import (
    BUILT_IN_EVENT_TYPES,
    logged_users_sample,
    user_items_logged,
    user_purchases_logged,
)
from personalization import redis_keys
from personalization.redis_client import get_control_redis
from scoring_app.engine.retrieval import (
    RECENT_ITEMS_USED,
    SIMILAR_SEED_ITEMS,
    USER_VECTOR_NEIGHBOURS,
    candidates_retrieve,
    item_model_rows,
    similar_rows,
    similar_to_recent_rows,
    user_state_fetch,
)

COMPARED = tuple(
    name for name in RETRIEVAL_FEATURE_NAMES if not name.startswith("retrieval_graph_") and name != "retrieval_sources"
)


@dataclass
class RetrievalSkewReport:
    users: int
    rows: int
    tolerance: float
    features: dict[str, FeatureSkew] = field(default_factory=dict)

    @property
    def mismatched(self) -> int:
        return sum(feature.mismatched for feature in self.features.values())


def _history(user_key: str) -> tuple[list[str], set[str]]:
    """The user's latest distinct interest items (newest first) and what they bought, from the log."""
    interest = [name for name, kind in BUILT_IN_EVENT_TYPES.items() if kind.marks_interest]
    recent = user_items_logged(user_id=user_key, limit=RECENT_ITEMS_USED, types=interest)
    return recent, user_purchases_logged(user_id=user_key)


def _in_stock() -> set[str]:
    return item_ids_in_stock()


def retrieval_skew_check(
    *, users: int = 25, tolerance: float = DEFAULT_TOLERANCE, seed: str = "skew"
) -> RetrievalSkewReport:
    """Compare, for sampled users, every served candidate's retrieval features with training's computation."""
    client = get_control_redis()
    report = RetrievalSkewReport(users=0, rows=0, tolerance=tolerance)
    report.features = {name: FeatureSkew(name) for name in COMPARED}
    columns = [RETRIEVAL_FEATURE_NAMES.index(name) for name in COMPARED]
    for user_key in logged_users_sample(users=users, seed=seed):
        state = user_state_fetch(user_key=user_key)
        candidate_set, _ = candidates_retrieve(state=state)
        if candidate_set.retrieval is None or not candidate_set.candidates:
            continue
        items = [candidate.item_id for candidate in candidate_set.candidates]
        recent, bought = _history(user_key)
        excluded = set(recent) | bought
        partition = redis_keys.partition_of(user_key)
        listed = client.hget(redis_keys.user_nearest_lists(partition), user_key)
        nearest = orjson.loads(listed) if listed else []
        item_model_raw = client.hget(redis_keys.user_item_model_lists(partition), user_key)
        item_model = orjson.loads(item_model_raw) if item_model_raw else []
        lists_raw = client.hmget(redis_keys.ITEM_SIMILAR_LISTS, recent[:SIMILAR_SEED_ITEMS]) if recent else []
        lists = {seed: orjson.loads(raw) for seed, raw in zip(recent, lists_raw, strict=False) if raw}
        in_stock = _in_stock()
        if recent and recent[0] not in lists:
            # Serving's own fallback when the newest item is newer than the lists: pgvector around the mean.
            similar = similar_to_recent_rows(recent)
        else:
            similar = similar_rows(recent, lists, in_stock)
        rankings = {
            "user_vector": [(item, score) for item, score in nearest if item not in excluded and item in in_stock][
                :USER_VECTOR_NEIGHBOURS
            ],
            "similar": similar,
            "item_model": item_model_rows([row for row in item_model if row[0] in in_stock], set(recent)),
            "popular": [(item, score) for item, score in state.popular_items if item in in_stock],
        }
        offline = retrieval_features(rankings, items)[:, columns]
        online = candidate_set.retrieval[:, columns]
        report.users += 1
        report.rows += len(items)
        labels = [f"{user_key}/{item}" for item in items]
        for column, name in enumerate(COMPARED):
            skew_compare(report.features[name], online[:, column], offline[:, column], labels, tolerance)
    return report
