"""Candidate retrieval on the hot path: plain Python over dataclasses, one Redis pipeline and one SQL round trip.

No ORM objects are built here (see the house style): the user's state comes from Redis, candidates from a
single pgvector query that also checks stock for the popular fill.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from django.db import DatabaseError, connection
from redis.exceptions import RedisError

from personalization import redis_keys
from personalization.redis_client import get_redis
from signals_app.online_reads import decode_popular, queue_popular

logger = logging.getLogger(__name__)

RECENT_ITEMS_USED = 20
# Popular items fetched beyond k, to survive out-of-stock and already-seen removals.
POPULAR_OVERFETCH = 3


@dataclass(frozen=True)
class Candidate:
    item_id: str
    score: float
    source: str
    explanation: str


@dataclass(frozen=True)
class UserState:
    user_key: str
    recent_items: list[str]
    popular_items: list[tuple[str, float]]
    model_version: str | None
    degraded: list[str] = field(default_factory=list)


def user_state_fetch(*, user_key: str, popular_depth: int) -> UserState:
    """The user's recent items, the popular items and the serving model version, in one Redis round trip."""
    try:
        pipeline = get_redis().pipeline(transaction=False)
        pipeline.lrange(redis_keys.user_recent_items(user_key), 0, RECENT_ITEMS_USED - 1)
        pipeline.get(redis_keys.active_model("embeddings"))
        queue_popular(pipeline, depth=popular_depth)
        replies = pipeline.execute()
    except RedisError as error:
        logger.warning("score.user_state_unavailable", extra={"error": str(error)})
        return UserState(user_key, [], [], None, degraded=["user_state_unavailable"])
    recent, model_version = replies[0], replies[1]
    return UserState(
        user_key=user_key,
        recent_items=[value.decode() for value in recent],
        popular_items=decode_popular(replies[2:], now=time.time(), depth=popular_depth),
        model_version=model_version.decode() if model_version else None,
    )


_SIMILAR_TO_RECENT_SQL = """
(SELECT external_id, 1 - (embedding <=> (SELECT avg(embedding) FROM graph_app_item
                                         WHERE external_id = ANY(%(recent)s) AND embedding IS NOT NULL)),
        'similar'
 FROM graph_app_item
 WHERE in_stock AND embedding IS NOT NULL AND NOT (external_id = ANY(%(recent)s))
 ORDER BY embedding <=> (SELECT avg(embedding) FROM graph_app_item
                         WHERE external_id = ANY(%(recent)s) AND embedding IS NOT NULL)
 LIMIT %(k)s)
UNION ALL
"""
_POPULAR_IN_STOCK_SQL = """
(SELECT external_id, 0.0, 'popular' FROM graph_app_item WHERE external_id = ANY(%(popular)s) AND in_stock)
"""
_POPULAR_FROM_CATALOG_SQL = """
SELECT external_id, popularity, 'popular' FROM graph_app_item WHERE in_stock ORDER BY popularity DESC LIMIT %(k)s
"""


def candidates_retrieve(*, state: UserState, k: int) -> tuple[list[Candidate], list[str]]:
    """Items similar to the user's recent items, then popular ones; in stock, not already seen, at most k."""
    degraded: list[str] = []
    exclude = set(state.recent_items)
    popular_scores = dict(state.popular_items)
    params: dict[str, int | list[str]]
    if "user_state_unavailable" in state.degraded:
        sql, params = _POPULAR_FROM_CATALOG_SQL, {"k": k + len(exclude)}
    else:
        sql = (_SIMILAR_TO_RECENT_SQL if state.recent_items else "") + _POPULAR_IN_STOCK_SQL
        params = {"recent": state.recent_items, "k": k, "popular": list(popular_scores)}
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
    except DatabaseError as error:
        logger.warning("score.catalog_unavailable", extra={"error": str(error)})
        rows = [(item_id, 0.0, "popular") for item_id, _ in state.popular_items]
        degraded.append("catalog_unavailable")

    similar: list[Candidate] = []
    popular_in_stock: set[str] = set()
    for item_id, score, source in rows:
        if source == "similar":
            if score is None:  # no recent item has an embedding yet
                continue
            similar.append(Candidate(item_id, float(score), "similar", "Similar to items you showed interest in"))
        elif "user_state_unavailable" in state.degraded:
            popular_scores[item_id] = float(score)
            popular_in_stock.add(item_id)
        else:
            popular_in_stock.add(item_id)
    # iterative_scan=relaxed_order may return neighbours slightly out of order.
    similar.sort(key=lambda candidate: candidate.score, reverse=True)

    chosen = similar[:k]
    taken = {candidate.item_id for candidate in chosen} | exclude
    top_popularity = max(popular_scores.values(), default=0.0) or 1.0
    for item_id, popularity in sorted(popular_scores.items(), key=lambda pair: pair[1], reverse=True):
        if len(chosen) >= k:
            break
        if item_id in taken or item_id not in popular_in_stock:
            continue
        chosen.append(Candidate(item_id, round(popularity / top_popularity, 6), "popular", "Popular right now"))
        taken.add(item_id)
    return chosen, degraded


_SIMILAR_TO_ITEM_SQL = """
SELECT external_id, 1 - (embedding <=> (SELECT embedding FROM graph_app_item WHERE external_id = %(item)s))
FROM graph_app_item
WHERE in_stock AND embedding IS NOT NULL AND external_id <> %(item)s
ORDER BY embedding <=> (SELECT embedding FROM graph_app_item WHERE external_id = %(item)s)
LIMIT %(k)s
"""


def similar_items(*, item_id: str, k: int) -> list[Candidate]:
    with connection.cursor() as cursor:
        cursor.execute(_SIMILAR_TO_ITEM_SQL, {"item": item_id, "k": k})
        rows = cursor.fetchall()
    candidates = [
        Candidate(other_id, float(score), "similar", f"Similar to {item_id}")
        for other_id, score in rows
        if score is not None
    ]
    candidates.sort(key=lambda candidate: candidate.score, reverse=True)
    return candidates
