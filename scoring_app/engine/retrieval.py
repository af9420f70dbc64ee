"""Candidate retrieval on the hot path: plain Python over dataclasses, one Redis pipeline and one SQL round trip.

No ORM objects are built here (see the house style): the user's state comes from Redis, candidates from a
single pgvector query that also checks stock for the popular fill.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field

import orjson
from django.db import DatabaseError, connection
from redis.exceptions import RedisError

from graph_app.neighbourhoods_online import item_neighbours, neighbour_explanation
from graph_app.online import unpack_static
from personalization import redis_keys
from personalization.cache import CacheWaitTimeout, item_cache_get, user_cache_get_or_build
from personalization.redis_client import get_redis
from signals_app.online_reads import decode_popular, queue_popular

logger = logging.getLogger(__name__)

RECENT_ITEMS_USED = 20
# The latest items whose knowledge-graph neighbours become candidates.
GRAPH_SEED_ITEMS = 5
# Below this many items of interest a user is "cold": graph neighbours (explainable) come before embeddings.
COLD_START_ITEMS = 3
SIMILAR_EXPLANATION = "Similar to items you showed interest in"


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
SELECT external_id, 1 - (embedding <=> (SELECT avg(embedding) FROM graph_app_item
                                        WHERE external_id = ANY(%(recent)s) AND embedding IS NOT NULL))
FROM graph_app_item
WHERE in_stock AND embedding IS NOT NULL AND NOT (external_id = ANY(%(recent)s))
ORDER BY embedding <=> (SELECT avg(embedding) FROM graph_app_item
                        WHERE external_id = ANY(%(recent)s) AND embedding IS NOT NULL)
LIMIT %(k)s
"""
_POPULAR_IN_STOCK_SQL = """
SELECT external_id FROM graph_app_item WHERE external_id = ANY(%(popular)s) AND in_stock
"""
_POPULAR_FROM_CATALOG_SQL = """
SELECT external_id, popularity FROM graph_app_item WHERE in_stock ORDER BY popularity DESC LIMIT %(k)s
"""
# The neighbours of a user's recent items are cached this long, keyed by those items and the model: a new event
# changes the key instead of needing an invalidation. Stock changes show up within the TTL.
SIMILAR_TO_RECENT_CACHE_SECONDS = 120
SIMILAR_TO_RECENT_CACHED = 100


def _similar_to_recent(state: UserState) -> list[tuple[str, float]]:
    """Items nearest the mean embedding of the user's recent items (pgvector HNSW), through a user-keyed cache."""

    def build() -> bytes:
        with connection.cursor() as cursor:
            cursor.execute(_SIMILAR_TO_RECENT_SQL, {"recent": state.recent_items, "k": SIMILAR_TO_RECENT_CACHED})
            rows = [(item_id, float(score)) for item_id, score in cursor.fetchall() if score is not None]
        # iterative_scan=relaxed_order may return neighbours slightly out of order.
        rows.sort(key=lambda row: row[1], reverse=True)
        return orjson.dumps(rows)

    version = hashlib.sha1("\x1f".join([state.model_version or "", *state.recent_items]).encode()).hexdigest()[:20]
    payload = user_cache_get_or_build(
        user_key=state.user_key, name="similar_to_recent", version=version, build=build,
        ttl_seconds=SIMILAR_TO_RECENT_CACHE_SECONDS,
    )  # fmt: skip
    return [(item_id, score) for item_id, score in orjson.loads(payload)]


def _graph_candidates(state: UserState) -> dict[str, Candidate]:
    """One-hop knowledge-graph neighbours of the user's latest items (shared entities, co-occurrence), best first,
    with why: "Because you like Retrospot", "Often bought with ..."."""
    try:
        neighbourhoods = item_neighbours(state.recent_items[:GRAPH_SEED_ITEMS])
    except RedisError as error:
        logger.warning("score.graph_unavailable", extra={"error": str(error)})
        return {}
    best: dict[str, Candidate] = {}
    neighbour_ids = sorted({neighbour.item_id for neighbours in neighbourhoods.values() for neighbour in neighbours})
    if not neighbour_ids:
        return {}
    try:
        facts = get_redis().hmget(redis_keys.CATALOG_STATIC, neighbour_ids)
    except RedisError:
        return {}
    # Neighbourhoods are refreshed hourly; stock changes by the minute: keep only what can be bought now.
    available = {
        item_id
        for item_id, packed in zip(neighbour_ids, facts, strict=True)
        if isinstance(packed, bytes) and unpack_static(packed)[1]
    }
    for neighbours in neighbourhoods.values():
        for neighbour in neighbours:
            if neighbour.item_id not in available:
                continue
            known = best.get(neighbour.item_id)
            if known is None or neighbour.score > known.score:
                best[neighbour.item_id] = Candidate(
                    neighbour.item_id, neighbour.score, "graph", neighbour_explanation(neighbour)
                )
    return dict(sorted(best.items(), key=lambda pair: pair[1].score, reverse=True))


def _personal_candidates(state: UserState, k: int) -> list[Candidate]:
    """Embedding neighbours of the user's taste and knowledge-graph neighbours of their items. A user with little
    history (cold start) gets the graph's first, whose explanations say why; otherwise the embeddings lead and the
    graph explains the items both found."""
    seen = set(state.recent_items)
    graph = {item_id: candidate for item_id, candidate in _graph_candidates(state).items() if item_id not in seen}
    similar = [
        Candidate(item_id, score, "similar", graph[item_id].explanation if item_id in graph else SIMILAR_EXPLANATION)
        for item_id, score in _similar_to_recent(state)
    ]
    ordered = [*graph.values(), *similar] if len(state.recent_items) < COLD_START_ITEMS else [*similar, *graph.values()]
    chosen: list[Candidate] = []
    taken: set[str] = set()
    for candidate in ordered:
        if candidate.item_id not in taken:
            chosen.append(candidate)
            taken.add(candidate.item_id)
        if len(chosen) >= k:
            break
    return chosen


def candidates_retrieve(*, state: UserState, k: int) -> tuple[list[Candidate], list[str]]:
    """Items similar to the user's recent items, then popular ones; in stock, not already seen, at most k."""
    degraded: list[str] = []
    exclude = set(state.recent_items)
    chosen: list[Candidate] = []
    try:
        if "user_state_unavailable" in state.degraded:
            with connection.cursor() as cursor:
                cursor.execute(_POPULAR_FROM_CATALOG_SQL, {"k": k + len(exclude)})
                popular = [(item_id, float(score)) for item_id, score in cursor.fetchall()]
            in_stock = {item_id for item_id, _ in popular}
        else:
            if state.recent_items:
                chosen = _personal_candidates(state, k)
            popular = state.popular_items
            in_stock = set()
            if len(chosen) < k and popular:
                with connection.cursor() as cursor:
                    cursor.execute(_POPULAR_IN_STOCK_SQL, {"popular": [item_id for item_id, _ in popular]})
                    in_stock = {row[0] for row in cursor.fetchall()}
    except DatabaseError as error:
        logger.warning("score.catalog_unavailable", extra={"error": str(error)})
        popular = state.popular_items
        in_stock = {item_id for item_id, _ in popular}
        degraded.append("catalog_unavailable")

    taken = {candidate.item_id for candidate in chosen} | exclude
    top_popularity = max((score for _, score in popular), default=0.0) or 1.0
    for item_id, popularity in sorted(popular, key=lambda pair: pair[1], reverse=True):
        if len(chosen) >= k:
            break
        if item_id in taken or item_id not in in_stock:
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


# An item's nearest neighbours change only with the catalog and the model: served stale-while-revalidate.
SIMILAR_ITEMS_FRESH_SECONDS = 300
SIMILAR_ITEMS_STALE_SECONDS = 86400
SIMILAR_ITEMS_CACHED = 100


def _similar_items_query(item_id: str) -> list[tuple[str, float]]:
    with connection.cursor() as cursor:
        cursor.execute(_SIMILAR_TO_ITEM_SQL, {"item": item_id, "k": SIMILAR_ITEMS_CACHED})
        rows = [(other_id, float(score)) for other_id, score in cursor.fetchall() if score is not None]
    rows.sort(key=lambda row: row[1], reverse=True)
    return rows


def similar_items(*, item_id: str, k: int) -> list[Candidate]:
    try:
        payload = item_cache_get(
            item_key=item_id, name="similar_items", fresh_seconds=SIMILAR_ITEMS_FRESH_SECONDS,
            stale_seconds=SIMILAR_ITEMS_STALE_SECONDS, build=lambda: orjson.dumps(_similar_items_query(item_id)),
        )  # fmt: skip
        rows = [(other_id, score) for other_id, score in orjson.loads(payload)]
    except CacheWaitTimeout:
        rows = _similar_items_query(item_id)  # another request is building it, slowly: answer on our own
    return [Candidate(other_id, score, "similar", f"Similar to {item_id}") for other_id, score in rows[:k]]
