"""Candidate retrieval on the hot path: plain Python over dataclasses, no ORM objects (see the house style).

Several sources run at once, each with its own deadline: the items nearest the user's vector (precomputed per user
after each embeddings training, `graph_app.user_lists`; pgvector for a user without a list), the nearest
items of their recent items (precomputed per item after each embeddings training, `graph_app.similar_lists`; pgvector
around the mean of their embeddings when the newest has no list yet), knowledge-graph neighbours of their latest
items, popular items of their favourite categories,
popular items overall, and fresh items for exploration. A source that misses its deadline is dropped, not awaited,
and the response says so. The union is deduplicated (each candidate remembers every source that produced it) and
cached per user for a minute, keyed by the user's recent items, favourite categories and the serving model, so an
event changes the key instead of needing an invalidation. Final scores are never cached.
"""

from __future__ import annotations

import base64
import contextvars
import functools
import hashlib
import logging
import operator
import threading
import time
from collections.abc import Callable, Collection, Container, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import orjson
import redis
from django.conf import settings
from django.db import DatabaseError, connection
from prometheus_client import Counter
from redis.exceptions import NoScriptError, RedisError

from graph_app.interface import (
    RETRIEVAL_FEATURE_NAMES,
    Neighbour,
    VectorIndexRebuilding,
    affinity_decode,
    catalog_category_popular_rows,
    catalog_facts_read,
    catalog_fresh_rows,
    catalog_popular_rows,
    catalog_stock_kept,
    item_neighbours,
    item_vector_index_serving,
    neighbour_explanation,
    neighbours_decode,
    neighbours_queue,
    retrieval_features,
    similar_to_item_rows,
    static_in_stock,
    user_vector_rows,
)
from graph_app.interface import (
    similar_to_recent_rows as _similar_to_recent_query,
)
from graph_app.state.interface import PopularRead, affinity_queue, popular_items_queue, recent_items_queue
from personalization import redis_keys
from personalization.cache import (
    NOT_READ,
    CacheWaitTimeout,
    Uncacheable,
    UserCacheWrite,
    item_cache_get,
    item_cache_identity,
    item_cache_peek,
    user_cache_get_or_build,
    user_cache_peek,
)
from personalization.candidates import Candidate, candidate_new
from personalization.process_caches import process_cache
from personalization.redis_client import ShaScript, get_redis
from scoring_app.engine import registry

logger = logging.getLogger(__name__)

RECENT_ITEMS_USED = 20
# The latest items whose knowledge-graph neighbours become candidates.
GRAPH_SEED_ITEMS = 5
# Below this many items of interest a user is "cold": graph neighbours (explainable) come before embeddings.
COLD_START_ITEMS = 3
SIMILAR_EXPLANATION = "Similar to items you showed interest in"
# The candidate set handed to ranking: at most this many.
CANDIDATES_MAX = 500
POPULAR_DEPTH = 120
USER_VECTOR_NEIGHBOURS = 100
# The best items of the user's item-to-item list taken (graph_app.item_model).
ITEM_MODEL_NEIGHBOURS = 100
ITEM_MODEL_EXPLANATION = "Often chosen with your items"
FAVOURITE_CATEGORIES = 3
CATEGORY_POPULAR_PER_CATEGORY = 40
FRESH_ITEMS = 30
FRESH_WITHIN_DAYS = 30
CANDIDATE_SET_CACHE_SECONDS = 60
# Part of the cached candidate set's version: a payload in an earlier layout is a miss, not an error.
CANDIDATE_SET_FORMAT = "3"

SOURCES_DROPPED = Counter(
    "score_retrieval_sources_dropped_total",
    "Retrieval sources dropped from a request, by reason.",
    ["source", "reason"],
)


@dataclass
class Prefetched:
    """What retrieval read ahead for its sources, by name: a source whose input is here runs inline, one whose input
    is missing (None) runs in the pool and reads for itself."""

    # Read raw in the state's round trip (NOT_READ: not read, the round trip failed): the user's cached candidate
    # set and source results, the newest items' shared list, and the catalog version (the catalog facts this process
    # keeps for it answer stock checks without a read).
    candidates: bytes | object | None = NOT_READ
    user_vector: bytes | object | None = NOT_READ
    similar_to_recent: bytes | object | None = NOT_READ
    fresh_items: bytes | None = None
    catalog_version: bytes | None = None
    # Filled by `_prefetch_sources`: the sources' cached results found fresh (payloads)...
    user_vector_rows: bytes | None = None
    similar_to_recent_rows: bytes | None = None
    fresh_rows: bytes | None = None
    category_rows: dict[str, bytes] = field(default_factory=dict)  # by category
    # ... and what one more round trip read: the stock of every item named below and by the popular list, the
    # neighbourhoods of the user's latest items, and the lists of the user and of their recent and context items,
    # checked in stock.
    in_stock: set[str] | None = None
    neighbours: dict[str, list[Neighbour]] | None = None
    user_vector_listed: list[tuple[str, float]] | None = None
    item_model_listed: list[tuple[str, float]] | None = None
    similar_rows: list[tuple[str, float]] | None = None
    context_rows: list[tuple[str, float, str]] | None = None

    def __contains__(self, name: str) -> bool:
        """Whether `name` was read ahead."""
        return getattr(self, name) is not None


class StateReads(Protocol):
    """A caller's own reads, queued on the state's round trip: `queue` returns how many replies they take, and
    `receive` gets those replies (it is not called when the round trip failed)."""

    def queue(self, pipeline: redis.client.Pipeline) -> int: ...

    def receive(self, replies: list[Any]) -> None: ...


@dataclass(frozen=True)
class UserState:
    user_key: str
    recent_items: list[str]
    popular_items: list[tuple[str, float]]
    model_version: str | None
    degraded: list[str] = field(default_factory=list)
    favourite_categories: list[str] = field(default_factory=list)
    # The model registry's serving snapshot (kind -> JSON), read in the same round trip.
    models_snapshot: dict[bytes, bytes] = field(default_factory=dict)
    # The request's context items (product page, cart): retrieval starts from them, the slate leaves them out.
    seeds: tuple[str, ...] = ()
    # What retrieval read ahead for its sources in pipelined round trips (filled in as it reads).
    prefetched: Prefetched = field(default_factory=Prefetched)


# Each source's own provenance, shared by its candidates: most items come from one source, and the merge keeps them
# as they are.
_USER_VECTOR, _SIMILAR, _GRAPH, _ITEM_MODEL = ("user_vector",), ("similar",), ("graph",), ("item_model",)
_CATEGORY_POPULAR, _POPULAR, _FRESH = ("category_popular",), ("popular",), ("fresh",)


def _favourite_categories(affinity: dict[bytes, bytes]) -> list[str]:
    """The user's categories by decayed frequency (all counters share one decay epoch, so raw values order)."""
    return affinity_decode(affinity).strongest(categories=True, count=FAVOURITE_CATEGORIES)


def _prefetch_with_state(pipeline: redis.client.Pipeline, user_key: str) -> int:
    """Queue the reads `Prefetched` takes from the state's round trip; how many replies they take."""
    pipeline.get(redis_keys.user_cache(user_key, "candidates"))
    pipeline.get(redis_keys.user_cache(user_key, "user_vector"))
    pipeline.get(redis_keys.user_cache(user_key, "similar_to_recent"))
    pipeline.get(redis_keys.item_cache("catalog", "fresh_items"))
    pipeline.get(redis_keys.CATALOG_VERSION)
    return 5


def _prefetched_with_state(replies: list[Any]) -> Prefetched:
    candidates, user_vector, similar_to_recent, fresh_items, catalog_version = replies
    return Prefetched(
        candidates=candidates, user_vector=user_vector, similar_to_recent=similar_to_recent, fresh_items=fresh_items,
        catalog_version=catalog_version,
    )  # fmt: skip


# The popular items as this process last read them, shared by its requests for SCORE_POPULAR_SHARED_SECONDS:
# (when read, on the monotonic clock; at what depth; the items). A ranking of the whole catalog's last hours
# barely moves within a second, and reading and decoding it cost every request more than the user's own state.
_popular_shared: tuple[float, int, list[tuple[str, float]]] | None = None


def _popular_kept(depth: int) -> list[tuple[str, float]] | None:
    kept = _popular_shared
    if kept is None or kept[1] != depth or time.monotonic() - kept[0] >= settings.SCORE_POPULAR_SHARED_SECONDS:
        return None
    return kept[2]


@process_cache("score.popular_shared")
def _popular_shared_forget() -> None:
    """Read the popular items afresh on the next request."""
    global _popular_shared
    _popular_shared = None


def user_state_fetch(
    *,
    user_key: str,
    popular_depth: int = POPULAR_DEPTH,
    seeds: Sequence[str] = (),
    extra: StateReads | None = None,
) -> UserState:
    """The user's recent items and favourite categories, the popular items and the serving models, in one Redis
    round trip (the popular items only when this process's are older than SCORE_POPULAR_SHARED_SECONDS). `seeds`
    (the item on a product page, the cart) lead the recent items as what retrieval starts from; `extra`: the caller's
    own reads, queued on the same pipeline, given their replies before this returns."""
    global _popular_shared
    popular = _popular_kept(popular_depth)

    def queue(pipeline: redis.client.Pipeline) -> tuple[int, PopularRead | None]:
        extra_count = extra.queue(pipeline) if extra is not None else 0
        recent_items_queue(pipeline, user_key=user_key, depth=RECENT_ITEMS_USED)
        pipeline.get(redis_keys.active_model("embeddings"))
        affinity_queue(pipeline, user_key=user_key)
        registry.queue_snapshot(pipeline)
        popular_read = popular_items_queue(pipeline, depth=popular_depth) if popular is None else None
        _prefetch_with_state(pipeline, user_key)
        return extra_count, popular_read

    try:
        try:
            pipeline = get_redis().pipeline(transaction=False)
            extra_count, popular_read = queue(pipeline)
            replies = pipeline.execute()
        except NoScriptError:
            # A script of `extra` (the key's rate limit) that Redis forgot after a restart or failover: nothing of it
            # ran; loaded again, the reads are sent once more.
            ShaScript.forget_all()
            pipeline = get_redis().pipeline(transaction=False)
            extra_count, popular_read = queue(pipeline)
            replies = pipeline.execute()
    except RedisError as error:
        logger.warning("score.user_state_unavailable", extra={"error": str(error)})
        return UserState(user_key, list(seeds), [], None, degraded=["user_state_unavailable"], seeds=tuple(seeds))
    all_replies = replies
    popular_count = popular_read.count if popular_read is not None else 0
    extra_replies, replies = replies[:extra_count], replies[extra_count:]
    recent, model_version, affinity, snapshot = replies[:4]
    own = [value.decode() for value in recent]
    prefetched = _prefetched_with_state(replies[4 + popular_count :])
    if popular is None:
        assert popular_read is not None  # queued whenever this process had none
        popular = popular_read(all_replies, now=time.time())
        _popular_shared = (time.monotonic(), popular_depth, popular)
    state = UserState(
        user_key=user_key,
        recent_items=[*seeds, *(item for item in own if item not in seeds)][:RECENT_ITEMS_USED],
        popular_items=popular,
        model_version=model_version.decode() if model_version else None,
        favourite_categories=_favourite_categories(affinity),
        models_snapshot=snapshot,
        seeds=tuple(seeds),
        prefetched=prefetched,
    )
    if extra is not None:
        extra.receive(extra_replies)
    return state


# The neighbours of a user's recent items are cached this long, keyed by those items and the model: a new event
# changes the key instead of needing an invalidation. Stock changes show up within the TTL.
SIMILAR_TO_RECENT_CACHE_SECONDS = 120
SIMILAR_TO_RECENT_CACHED = 100
# The recent items whose precomputed nearest items (`graph_app.similar_lists`) make the "similar" source, and how
# much each older one counts: an item's score is its best cosine to one of them, times 0.9 per step back in time.
SIMILAR_SEED_ITEMS = 10
SIMILAR_SEED_DECAY = 0.9


def _similar_version(state: UserState) -> str:
    return hashlib.sha1("\x1f".join([state.model_version or "", *state.recent_items]).encode()).hexdigest()[:20]


def _neighbours_cached(
    state: UserState,
    *,
    name: str,
    version: str,
    ttl_seconds: int,
    query: Callable[[], list[tuple[str, float]]],
    rows: bytes | None,
    stored: bytes | object | None,
) -> list[tuple[str, float]]:
    """pgvector neighbours (item id, similarity), best first, through the user-keyed cache `name` (`stored`: its
    value as the state's round trip read it), or the read-ahead's `rows` of it; `query`: Graph's query on a miss."""

    def build() -> bytes:
        if not item_vector_index_serving():
            raise VectorIndexRebuilding("the items' vector index is being rebuilt")
        return orjson.dumps(query())

    payload = rows or user_cache_get_or_build(
        user_key=state.user_key, name=name, version=version, build=build, ttl_seconds=ttl_seconds, stored=stored
    )
    return [(item_id, score) for item_id, score in orjson.loads(payload)]


def similar_to_recent_rows(recent_items: Sequence[str]) -> list[tuple[str, float]]:
    """The pgvector query behind the "similar" source when the newest recent item has no list, uncached (the skew
    check recomputes it)."""
    return _similar_to_recent_query(recent=recent_items, k=SIMILAR_TO_RECENT_CACHED)


def _similar_to_recent(state: UserState) -> list[tuple[str, float]]:
    """Items nearest the mean embedding of the user's recent items (pgvector's index), through a user-keyed cache."""
    return _neighbours_cached(
        state, name="similar_to_recent", version=_similar_version(state), ttl_seconds=SIMILAR_TO_RECENT_CACHE_SECONDS,
        query=lambda: _similar_to_recent_query(recent=state.recent_items, k=SIMILAR_TO_RECENT_CACHED),
        rows=state.prefetched.similar_to_recent_rows, stored=state.prefetched.similar_to_recent,
    )  # fmt: skip


def _graph_candidates(state: UserState) -> dict[str, Candidate]:
    """One-hop knowledge-graph neighbours of the user's latest items (shared entities, co-occurrence), best first,
    with why: "Because you like Retrospot", "Often bought with ..."."""
    neighbourhoods: Mapping[str, Sequence[Neighbour]] | None = state.prefetched.neighbours
    if neighbourhoods is None:
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
        # Neighbourhoods are refreshed hourly; stock changes by the minute: keep only what can be bought now.
        available = state.prefetched.in_stock
        if available is None:
            available = _in_stock(neighbour_ids)
    except RedisError:
        return {}
    for neighbours in neighbourhoods.values():
        for neighbour in neighbours:
            if neighbour.item_id not in available:
                continue
            known = best.get(neighbour.item_id)
            if known is None or neighbour.score > known.score:
                best[neighbour.item_id] = candidate_new(
                    neighbour.item_id, neighbour.score, "graph", neighbour_explanation(neighbour), _GRAPH
                )
    return dict(sorted(best.items(), key=lambda pair: pair[1].score, reverse=True))


# Shared lists (a category's best sellers, the newest items) change slowly and are the same for every user:
# served stale-while-revalidate from an item-keyed cache, one rebuild at a time.
SHARED_LIST_FRESH_SECONDS = 60
SHARED_LIST_STALE_SECONDS = 3600


def _shared_list(
    key: str, name: str, query: Callable[[], list[tuple[str, float]]], prefetched: bytes | None = None
) -> list[tuple[str, float]]:
    payload = prefetched or item_cache_get(
        item_key=key, name=name, fresh_seconds=SHARED_LIST_FRESH_SECONDS, stale_seconds=SHARED_LIST_STALE_SECONDS,
        build=lambda: orjson.dumps(query()),
    )  # fmt: skip
    return [(item_id, score) for item_id, score in orjson.loads(payload)]


# The user's vector changes only when the embeddings are retrained: its neighbours are cached per user and model
# version (the version is the cache version) for the user cache's longest TTL. Taken without the exclusion of the
# user's recent items, RECENT_ITEMS_USED more than needed, so that the exclusion applies when read.
USER_VECTOR_CACHE_SECONDS = 300


def _user_vector_version(state: UserState) -> str:
    return hashlib.sha1((state.model_version or "").encode()).hexdigest()[:20]


def _user_vector_neighbours(state: UserState) -> list[tuple[str, float]]:
    listed = state.prefetched.user_vector_listed
    if listed is not None:  # the user's precomputed list, checked in stock by the read-ahead
        return listed
    return _neighbours_cached(
        state, name="user_vector", version=_user_vector_version(state), ttl_seconds=USER_VECTOR_CACHE_SECONDS,
        query=lambda: user_vector_rows(user_key=state.user_key, k=USER_VECTOR_NEIGHBOURS + RECENT_ITEMS_USED),
        rows=state.prefetched.user_vector_rows, stored=state.prefetched.user_vector,
    )  # fmt: skip


def _user_vector_source(state: UserState) -> list[Candidate]:
    recent = set(state.recent_items)
    rows = [(item_id, score) for item_id, score in _user_vector_neighbours(state) if item_id not in recent]
    return [
        candidate_new(item_id, score, "user_vector", "Picked for your taste", _USER_VECTOR)
        for item_id, score in rows[:USER_VECTOR_NEIGHBOURS]
    ]


def _item_model_source(state: UserState) -> list[Candidate]:
    """The user's best items by the item-to-item model (`graph_app.item_model`), precomputed at training and read
    ahead with the user's nearest list (checked in stock there); none for a user without one."""
    listed = state.prefetched.item_model_listed or []
    recent = set(state.recent_items)
    return [
        candidate_new(item_id, score, "item_model", ITEM_MODEL_EXPLANATION, _ITEM_MODEL)
        for item_id, score in item_model_rows(listed, recent)
    ]


def item_model_rows(listed: Sequence[Sequence[Any]], excluded: Container[str]) -> list[tuple[str, float]]:
    """The "item_model" rows of a user's list (already in stock): without `excluded`, the first
    ITEM_MODEL_NEIGHBOURS (training and the skew check build theirs with it too)."""
    rows = [(str(item_id), float(score)) for item_id, score in listed if item_id not in excluded]
    return rows[:ITEM_MODEL_NEIGHBOURS]


def similar_rows(
    recent_items: Sequence[str], lists: Mapping[str, Sequence[Sequence[Any]]], in_stock: Container[str]
) -> list[tuple[str, float]]:
    """The "similar" rows from the recent items' precomputed nearest items: each item's best decayed cosine, in
    stock and not among the recent items, best first (training builds its candidates with it too)."""
    recent = set(recent_items)
    best: dict[str, float] = {}
    for position, seed in enumerate(recent_items[:SIMILAR_SEED_ITEMS]):
        weight = SIMILAR_SEED_DECAY**position
        for item_id, cosine in lists.get(seed, ()):
            score = cosine * weight
            if score > best.get(item_id, -2.0) and item_id not in recent and item_id in in_stock:
                best[item_id] = score
    rows = sorted(best.items(), key=lambda pair: pair[1], reverse=True)[:SIMILAR_TO_RECENT_CACHED]
    return [(item_id, round(score, 6)) for item_id, score in rows]


def _recent_items_source(state: UserState) -> list[Candidate]:
    if not state.recent_items:
        return []
    rows = state.prefetched.similar_rows
    if rows is None:  # the newest recent item has no precomputed list (newer than the embeddings): pgvector
        rows = _similar_to_recent(state)
    return [candidate_new(item_id, score, "similar", SIMILAR_EXPLANATION, _SIMILAR) for item_id, score in rows]


def _category_popular_source(state: UserState) -> list[Candidate]:
    chosen: list[Candidate] = []
    for category in state.favourite_categories:
        rows = _shared_list(
            f"category:{category}", "popular_in_category",
            functools.partial(catalog_category_popular_rows, category=category, k=CATEGORY_POPULAR_PER_CATEGORY),
            state.prefetched.category_rows.get(category),
        )  # fmt: skip
        top = max((score for _, score in rows), default=0.0) or 1.0
        explanation = f"Popular in {category}"
        chosen += [
            candidate_new(item_id, round(score / top, 6), "category_popular", explanation, _CATEGORY_POPULAR)
            for item_id, score in rows
        ]
    return chosen


def _fresh_source(state: UserState) -> list[Candidate]:
    rows = _shared_list(
        "catalog", "fresh_items", lambda: catalog_fresh_rows(days=FRESH_WITHIN_DAYS, k=FRESH_ITEMS),
        state.prefetched.fresh_rows,
    )  # fmt: skip
    newest = max((created for _, created in rows), default=0.0)
    return [
        candidate_new(item_id, round(2.0 ** (-(newest - created) / 86400.0), 6), "fresh", "New in", _FRESH)
        for item_id, created in rows
    ]


def _in_stock(
    item_ids: Collection[str], *, user_key: str | None = None, catalog_version: bytes | None = None
) -> set[str]:
    """The items in stock, from the catalog's copy in Redis (kept by the catalog services with every change).
    With the user and the catalog version the caller read in its own round trip: the catalog facts this process
    keeps for that version answer (`catalog_stock_kept`, set operations over hundreds of items), and the rest's
    facts are read whole and kept too."""
    kept, stocked = catalog_stock_kept(catalog_version) if user_key is not None else ({}, set())
    in_stock = stocked.intersection(item_ids)
    # Every item of the in-stock set has its facts kept: only the others (a few) are looked up among the facts of
    # the whole catalog.
    unknown = [item_id for item_id in set(item_ids).difference(in_stock) if item_id not in kept]
    if not unknown:
        return in_stock
    if user_key is not None and settings.FEATURE_CATALOG_CACHE_ITEMS > 0:
        read = catalog_facts_read(user_key=user_key, item_ids=unknown, version=catalog_version)
        statics = [read[item_id][0] for item_id in unknown]
    else:
        statics = get_redis().hmget(redis_keys.CATALOG_STATIC, unknown)
    in_stock.update(
        item_id for item_id, static in zip(unknown, statics, strict=True) if static and static_in_stock(static)
    )
    return in_stock


def _popular_source(state: UserState) -> list[Candidate]:
    """Popular items right now (the online counters), checked in stock."""
    if not state.popular_items:
        return []
    in_stock = state.prefetched.in_stock
    if in_stock is None:
        in_stock = _in_stock([item_id for item_id, _ in state.popular_items])
    top = max((score for _, score in state.popular_items), default=0.0) or 1.0
    return [
        candidate_new(item_id, round(score / top, 6), "popular", "Popular right now", _POPULAR)
        for item_id, score in state.popular_items
        if item_id in in_stock
    ]


def _graph_source(state: UserState) -> list[Candidate]:
    return list(_graph_candidates(state).values())


# The request's context items (a product page's item, a cart) whose neighbours make the "context" source: the
# first ones, each further one counting x0.9 (SIMILAR_SEED_DECAY) as for the recent items.
CONTEXT_SEED_ITEMS = 10
CONTEXT_CANDIDATES = 100
CONTEXT_EXPLANATION = "Goes with what you are looking at"
_CONTEXT = ("context",)


def _context_rows(
    seeds: Sequence[str],
    lists: Mapping[str, Sequence[Sequence[Any]]],
    neighbourhoods: Mapping[str, Sequence[Neighbour]],
    in_stock: Container[str],
) -> list[tuple[str, float, str]]:
    """(item, score, explanation) of the items related to the seeds: their nearest items by embedding (precomputed
    lists) and their knowledge-graph and co-purchase neighbours, in stock and not among the seeds. An item's score
    is its best decayed cosine plus its best decayed neighbour score (both about [0, 1]): related both ways comes
    first. Ties go by item id, so that every process orders them alike."""
    cosines: dict[str, float] = {}
    related: dict[str, tuple[float, Neighbour]] = {}
    for position, seed in enumerate(seeds):
        weight = SIMILAR_SEED_DECAY**position
        for item_id, cosine in lists.get(seed, ()):
            cosines[item_id] = max(cosines.get(item_id, -2.0), float(cosine) * weight)
        for neighbour in neighbourhoods.get(seed, ()):
            known = related.get(neighbour.item_id)
            if known is None or neighbour.score * weight > known[0]:
                related[neighbour.item_id] = (neighbour.score * weight, neighbour)
    excluded = set(seeds)
    rows: list[tuple[str, float, str]] = []
    for item_id in cosines.keys() | related.keys():
        if item_id in excluded or item_id not in in_stock:
            continue
        graph = related.get(item_id)
        score = max(cosines.get(item_id, 0.0), 0.0) + (graph[0] if graph else 0.0)
        explanation = neighbour_explanation(graph[1]) if graph else CONTEXT_EXPLANATION
        rows.append((item_id, round(score, 6), explanation))
    rows.sort(key=lambda row: (-row[1], row[0]))
    return rows[:CONTEXT_CANDIDATES]


def _context_source(state: UserState) -> list[Candidate]:
    """Items related to the request's context items: the slate leads with them (`scoring_app.engine.scoring`). Read
    ahead with the other sources' inputs (`_prefetch_sources`), else in one round trip of its own."""
    if not state.seeds:
        return []
    rows = state.prefetched.context_rows
    if rows is None:
        seeds = list(state.seeds[:CONTEXT_SEED_ITEMS])
        pipeline = get_redis().pipeline(transaction=False)
        neighbours_queue(pipeline, seeds)
        pipeline.hmget(redis_keys.ITEM_SIMILAR_LISTS, seeds)
        replies = pipeline.execute()
        lists = {seed: orjson.loads(payload) for seed, payload in zip(seeds, replies.pop(), strict=True) if payload}
        neighbourhoods = neighbours_decode(replies, item_ids=seeds)
        named = {neighbour.item_id for neighbours in neighbourhoods.values() for neighbour in neighbours}
        named.update(item_id for rows_of_seed in lists.values() for item_id, _ in rows_of_seed)
        rows = _context_rows(seeds, lists, neighbourhoods, _in_stock(named))
    return [candidate_new(item_id, score, "context", explanation, _CONTEXT) for item_id, score, explanation in rows]


@dataclass(frozen=True)
class RetrievalSource:
    name: str
    fetch: Callable[[UserState], list[Candidate]]
    deadline_ms: float
    uses_database: bool
    # Whether what the source needs was read ahead (`_prefetch_sources`): then it runs inline, in microseconds,
    # instead of in the pool under its deadline. None: always in the pool.
    ready: Callable[[UserState], bool] | None = None


# Every source gets the Score layer's whole retrieval budget: they run at once, and on two cores the GIL serializes
# their Python work, so a cheap source started last still needs most of it.
RETRIEVAL_DEADLINE_MS = 10.0
# The context source is the last one dropped: on a product page or beside a cart its items are what the shelf is
# for, the other sources only fill it. It is waited for first, so the others' time runs meanwhile.
CONTEXT_DEADLINE_MS = 25.0

# In the order their candidates are merged (and served when no ranker or bandit scores them): what the request's
# context items (a product page, a cart) relate to, the user's own signals, then what is popular, then exploration.
SOURCES: tuple[RetrievalSource, ...] = (
    RetrievalSource(
        "context", _context_source, CONTEXT_DEADLINE_MS, False,
        lambda state: not state.seeds or state.prefetched.context_rows is not None,
    ),
    RetrievalSource(
        "similar", _recent_items_source, RETRIEVAL_DEADLINE_MS, True,
        lambda state: (
            not state.recent_items
            or state.prefetched.similar_rows is not None
            or state.prefetched.similar_to_recent_rows is not None
        ),
    ),
    RetrievalSource(
        "graph", _graph_source, RETRIEVAL_DEADLINE_MS, False,
        lambda state: state.prefetched.neighbours is not None and state.prefetched.in_stock is not None,
    ),
    RetrievalSource(
        "user_vector", _user_vector_source, RETRIEVAL_DEADLINE_MS, True,
        lambda state: state.prefetched.user_vector_listed is not None or state.prefetched.user_vector_rows is not None,
    ),
    RetrievalSource(
        "item_model", _item_model_source, RETRIEVAL_DEADLINE_MS, False,
        lambda state: state.prefetched.item_model_listed is not None,
    ),
    RetrievalSource(
        "category_popular", _category_popular_source, RETRIEVAL_DEADLINE_MS, True,
        lambda state: all(category in state.prefetched.category_rows for category in state.favourite_categories),
    ),
    RetrievalSource(
        "popular", _popular_source, RETRIEVAL_DEADLINE_MS, False,
        lambda state: not state.popular_items or state.prefetched.in_stock is not None,
    ),
    RetrievalSource(
        "fresh", _fresh_source, RETRIEVAL_DEADLINE_MS, True, lambda state: state.prefetched.fresh_rows is not None
    ),
)  # fmt: skip


def _prefetch_sources(state: UserState, sources: tuple[RetrievalSource, ...]) -> None:
    """Read ahead what the sources need, so that those whose input is cached run inline, not in threads: the
    user's caches and the newest items came with the state; one round trip reads the neighbourhoods of the
    user's latest items, the best sellers of their categories and the user's nearest items, one more the stock of
    every item those and the popular list name. What is missing or stale is left to its source (which builds it
    under its deadline)."""
    _prefetch_cached(state)
    read_ahead = _ReadAhead.planned(state, {source.name for source in sources})
    try:
        read_ahead.run(state)
    except RedisError as error:  # the sources read for themselves, and fail on their own
        logger.warning("score.prefetch_failed", extra={"error": str(error)})


def _prefetch_cached(state: UserState) -> None:
    """The sources' results cached and still fresh, among the values the state's round trip read."""
    prefetched = state.prefetched
    prefetched.similar_to_recent_rows = user_cache_peek(
        name="similar_to_recent", version=_similar_version(state), stored=prefetched.similar_to_recent
    )
    prefetched.user_vector_rows = user_cache_peek(
        name="user_vector", version=_user_vector_version(state), stored=prefetched.user_vector
    )
    prefetched.fresh_rows = item_cache_peek(
        name="fresh_items", fresh_seconds=SHARED_LIST_FRESH_SECONDS, stored=prefetched.fresh_items
    )


@dataclass(frozen=True)
class _ReadAhead:
    """What the read-ahead's round trip reads for the chosen sources, in the order its replies come back."""

    graph_seeds: list[str]  # the latest items whose neighbourhoods make the "graph" source
    # The request's context items: their neighbourhoods and lists are mostly read already (they lead the recent items).
    context_seeds: list[str]
    categories: list[str]  # the user's favourite categories, whose best sellers are cached
    similar_seeds: list[str]  # the recent items whose nearest-item lists make the "similar" source
    # The user's precomputed nearest items (`graph_app.user_lists`) stand for the pgvector query around their
    # vector, unless that query's result is cached; they were not checked in stock when computed.
    nearest: bool
    # The user's item-to-item list (`graph_app.item_model`), not checked in stock when computed either.
    item_model: bool

    @classmethod
    def planned(cls, state: UserState, names: Container[str]) -> _ReadAhead:
        return cls(
            graph_seeds=state.recent_items[:GRAPH_SEED_ITEMS] if "graph" in names else [],
            context_seeds=list(state.seeds[:CONTEXT_SEED_ITEMS]) if "context" in names else [],
            categories=list(state.favourite_categories) if "category_popular" in names else [],
            similar_seeds=state.recent_items[:SIMILAR_SEED_ITEMS] if "similar" in names else [],
            nearest="user_vector" in names and state.prefetched.user_vector_rows is None,
            item_model="item_model" in names,
        )

    @property
    def neighbour_seeds(self) -> list[str]:
        return [*self.graph_seeds, *(seed for seed in self.context_seeds if seed not in self.graph_seeds)]

    @property
    def list_seeds(self) -> list[str]:
        return [*self.similar_seeds, *(seed for seed in self.context_seeds if seed not in self.similar_seeds)]

    def run(self, state: UserState) -> None:
        """Read, then fill in `state.prefetched` (the stock check is the second round trip, when needed)."""
        pipeline = get_redis().pipeline(transaction=False)
        neighbour_replies = neighbours_queue(pipeline, self.neighbour_seeds)
        for category in self.categories:
            pipeline.get(redis_keys.item_cache(f"category:{category}", "popular_in_category"))
        if self.list_seeds:
            pipeline.hmget(redis_keys.ITEM_SIMILAR_LISTS, self.list_seeds)
        partition = redis_keys.partition_of(state.user_key)
        if self.nearest:
            pipeline.hget(redis_keys.user_nearest_lists(partition), state.user_key)
        if self.item_model:
            pipeline.hget(redis_keys.user_item_model_lists(partition), state.user_key)
        # Nothing queued (no source that reads ahead): no round trip.
        replies = pipeline.execute() if len(pipeline) else []
        self._take(state, replies, neighbour_replies)

    def _take(self, state: UserState, replies: list[Any], neighbour_replies: int) -> None:
        prefetched = state.prefetched
        item_model_list = replies.pop() if self.item_model else None
        nearest_list = replies.pop() if self.nearest else None
        similar_lists = {
            seed: orjson.loads(payload)
            for seed, payload in zip(self.list_seeds, replies.pop() if self.list_seeds else [], strict=True)
            if payload
        }
        neighbourhoods = neighbours_decode(replies[:neighbour_replies], item_ids=self.neighbour_seeds)
        for category, raw in zip(self.categories, replies[neighbour_replies:], strict=True):
            payload = item_cache_peek(name="popular_in_category", fresh_seconds=SHARED_LIST_FRESH_SECONDS, stored=raw)
            if payload is not None:
                prefetched.category_rows[category] = payload
        nearest: list[list[Any]] = orjson.loads(nearest_list) if nearest_list else []
        item_model_listed: list[list[Any]] = orjson.loads(item_model_list) if item_model_list else []
        named = {neighbour.item_id for neighbours in neighbourhoods.values() for neighbour in neighbours}
        # The popular items always: the placement's popular fallback checks them too, source or not.
        named.update(item_id for item_id, _ in state.popular_items)
        named.update(item_id for rows in similar_lists.values() for item_id, _ in rows)
        named.update(item_id for item_id, _ in nearest)
        named.update(item_id for item_id, _ in item_model_listed)
        in_stock = prefetched.in_stock = _in_stock(
            named, user_key=state.user_key, catalog_version=prefetched.catalog_version
        )
        if nearest:
            prefetched.user_vector_listed = [(item_id, score) for item_id, score in nearest if item_id in in_stock]
        if self.item_model:
            prefetched.item_model_listed = [
                (item_id, score) for item_id, score in item_model_listed if item_id in in_stock
            ]
        prefetched.neighbours = {seed: neighbourhoods[seed] for seed in self.graph_seeds}
        if self.context_seeds:
            prefetched.context_rows = _context_rows(self.context_seeds, similar_lists, neighbourhoods, in_stock)
        # The lists serve when the newest item has one; an item newer than the last training leads otherwise, and
        # the older items' lists alone would miss what the shopper looks at now: pgvector, around their mean.
        if self.similar_seeds and self.similar_seeds[0] in similar_lists:
            prefetched.similar_rows = similar_rows(state.recent_items, similar_lists, in_stock)


_pool: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor | None:
    global _pool
    threads = settings.SCORE_RETRIEVAL_THREADS
    if threads <= 0:
        return None
    if _pool is None:
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="retrieval")
        # Open every thread's database connection now: a first connection takes longer than any source's deadline.
        barrier = threading.Barrier(threads)

        def warm() -> None:
            barrier.wait(timeout=10)
            connection.ensure_connection()

        for future in [pool.submit(warm) for _ in range(threads)]:
            future.result(timeout=15)
        _pool = pool
    return _pool


def retrieval_warm_up() -> None:
    """Start the retrieval threads and their connections (a worker calls it before its first request)."""
    _executor()


def _run_in_thread(source: RetrievalSource, state: UserState) -> list[Candidate]:
    # Pool threads keep their own connection between requests. One broken by a database restart fails a query,
    # which marks it: it is tested then, and replaced, before the next one. Django's health check (CONN_HEALTH_CHECKS)
    # would instead send a query of its own before every source's: a round trip on a pooled, busy connection.
    if source.uses_database:
        connection.close_if_unusable_or_obsolete()
        connection.health_check_done = True  # type: ignore[attr-defined]
    return source.fetch(state)


@dataclass(frozen=True)
class CandidateSet:
    candidates: list[Candidate]
    # Sources that produced nothing in time: "user_vector:deadline", "graph:error"...
    dropped: list[str]
    # The set built by this request, when its caller stores it (`candidates_retrieve(defer_store=True)`).
    unsaved: list[UserCacheWrite] = field(default_factory=list)
    # The candidates' retrieval features (rows in candidate order, RETRIEVAL_FEATURE_NAMES columns), for the ranker.
    retrieval: np.ndarray | None = None

    def as_bytes(self) -> bytes:
        """One payload for the user cache: the candidates' ids and scores, and what else each has (source,
        explanation, provenance) once per distinct combination, so that reading it back builds few objects; the
        retrieval features as float32 bytes."""
        kinds: dict[tuple[Any, ...], int] = {}
        rows = [
            kinds.setdefault((candidate.source, candidate.explanation, candidate.sources), len(kinds))
            for candidate in self.candidates
        ]
        features = self.retrieval if self.retrieval is not None else _retrieval_blank(len(self.candidates))
        return orjson.dumps({
            "i": [candidate.item_id for candidate in self.candidates],
            "s": [candidate.score for candidate in self.candidates],
            "k": list(kinds), "r": rows, "d": self.dropped,
            "f": base64.b64encode(features.astype(np.float32).tobytes()).decode(),
        })  # fmt: skip

    @classmethod
    def from_bytes(cls, payload: bytes) -> CandidateSet:
        decoded = orjson.loads(payload)
        kinds = [(source, explanation, tuple(sources)) for source, explanation, sources in decoded["k"]]
        # Every candidate is built from C (map), not by a Python loop: repeat requests decode hundreds.
        chosen = list(map(kinds.__getitem__, decoded["r"]))
        candidates = list(
            map(
                candidate_new,
                decoded["i"],
                decoded["s"],
                map(_SOURCE, chosen),
                map(_EXPLANATION, chosen),
                map(_SOURCES, chosen),
            )
        )
        features = np.frombuffer(base64.b64decode(decoded["f"]), dtype=np.float32).astype(np.float64)
        return cls(
            candidates, list(decoded["d"]), retrieval=features.reshape(len(candidates), len(RETRIEVAL_FEATURE_NAMES))
        )


_SOURCE, _EXPLANATION, _SOURCES = operator.itemgetter(0), operator.itemgetter(1), operator.itemgetter(2)


def _retrieval_blank(count: int) -> np.ndarray:
    return np.full((count, len(RETRIEVAL_FEATURE_NAMES)), np.nan)


def _sources_run(
    state: UserState, sources: tuple[RetrievalSource, ...]
) -> tuple[dict[str, list[Candidate]], list[str]]:
    """Run every source in parallel threads; one late for its deadline is dropped, not awaited. Without a pool
    (SCORE_RETRIEVAL_THREADS=0: development and tests) they run one after another with no deadline."""
    results: dict[str, list[Candidate]] = {}
    dropped: list[str] = []

    def failed(source: RetrievalSource, reason: str, error: BaseException | None = None) -> None:
        if isinstance(error, VectorIndexRebuilding):  # expected for the rebuild's minutes: no warning each time
            reason, error = "vector_index_rebuilding", None
        dropped.append(f"{source.name}:{reason}")
        SOURCES_DROPPED.labels(source=source.name, reason=reason).inc()
        if error is not None:
            logger.warning("score.source_failed", extra={"source": source.name, "error": str(error)})

    executor = _executor()
    if executor is None:
        for source in sources:
            try:
                results[source.name] = source.fetch(state)
            except (RedisError, DatabaseError, CacheWaitTimeout) as error:
                failed(source, "error", error)
        return results, dropped

    inline = [source for source in sources if source.ready is not None and source.ready(state)]
    pooled = [source for source in sources if source not in inline]
    started = time.perf_counter()
    # Each source runs in a copy of the request's context, so that its log lines carry the request id (a copy is
    # an O(1) snapshot; one per source, since a context cannot be entered by two threads at once).
    futures = {
        source.name: executor.submit(contextvars.copy_context().run, _run_in_thread, source, state) for source in pooled
    }
    for source in inline:  # their input is in memory already: no deadline to miss
        try:
            results[source.name] = source.fetch(state)
        except (RedisError, DatabaseError, CacheWaitTimeout) as error:
            failed(source, "error", error)
    for source in pooled:
        future = futures[source.name]
        remaining = source.deadline_ms * settings.SCORE_RETRIEVAL_DEADLINE_FACTOR / 1000 - (
            time.perf_counter() - started
        )
        futures_wait([future], timeout=max(0.0, remaining))
        if not future.done():
            failed(source, "deadline")  # the thread finishes on its own; its result is ignored
            continue
        problem = future.exception()
        if problem is not None:
            failed(source, "error", problem)
            continue
        results[source.name] = future.result()
    return results, dropped


def _merge(state: UserState, results: dict[str, list[Candidate]]) -> list[Candidate]:
    """Union in source order, deduplicated; an item keeps its first source and explanation and lists all."""
    order = [source.name for source in SOURCES]
    if len(state.recent_items) < COLD_START_ITEMS and "graph" in results:
        order.remove("graph")
        order.insert(0, "graph")  # a cold user's explainable graph neighbours lead
    graph_explanations = {candidate.item_id: candidate.explanation for candidate in results.get("graph", [])}
    seen = set(state.recent_items)
    # Where each item was first found; most come from one source, and their candidate is kept as the source built it.
    first: dict[str, Candidate] = {}
    more: dict[str, list[str]] = {}  # items found by more than one source: every source, in order
    for name in order:
        own = (name,)
        for candidate in results.get(name, ()):
            item_id = candidate.item_id
            found = first.get(item_id)
            if found is None:
                if item_id in seen:
                    continue
                explanation = candidate.explanation
                if name == "similar" and item_id in graph_explanations:
                    explanation = graph_explanations[item_id]
                if candidate.sources != own or candidate.source != name or explanation is not candidate.explanation:
                    # A new object: the source's own list, as it returned it, makes the retrieval features.
                    candidate = Candidate(item_id, candidate.score, name, explanation, own)
                first[item_id] = candidate
            else:
                names = more.get(item_id)
                if names is None:
                    names = more[item_id] = [found.source]
                if name not in names:
                    names.append(name)
    for item_id, names in more.items():
        if len(names) > 1:
            first[item_id].sources = tuple(names)
    return list(first.values())


def _catalog_popular(state: UserState, limit: int) -> list[Candidate]:
    """Redis is down: the popularity PostgreSQL keeps (refreshed every few minutes)."""
    rows = catalog_popular_rows(k=limit)
    top = max((score for _, score in rows), default=0.0) or 1.0
    return [
        Candidate(item_id, round(score / top, 6), "popular", "Popular right now", ("popular",))
        for item_id, score in rows
    ]


def popular_fallback(*, state: UserState, limit: int) -> list[Candidate]:
    """A placement's popular fallback: the online popular items in stock, or PostgreSQL's popularity when Redis
    is unavailable."""
    if "user_state_unavailable" in state.degraded:
        return _catalog_popular(state, limit)
    try:
        popular = _popular_source(state)
    except RedisError:
        return _catalog_popular(state, limit)
    return [Candidate(c.item_id, c.score, c.source, c.explanation, ("popular",)) for c in popular[:limit]]


def candidates_retrieve(
    *, state: UserState, limit: int | None = None, sources: Sequence[str] = (), defer_store: bool = False
) -> tuple[CandidateSet, list[str]]:
    """The candidate set for ranking: every source's items, deduplicated, at most `limit` (popular items alone
    give at least POPULAR_DEPTH when the catalog has them). Returns it and what degraded. `defer_store`: a set
    built here is not stored in the user's cache but left in its `unsaved`, for the caller's next round trip
    (the feature read's) to write."""
    degraded: list[str] = []
    limit = min(limit or settings.SCORE_CANDIDATES, CANDIDATES_MAX)
    try:
        if "user_state_unavailable" in state.degraded:
            return CandidateSet(_catalog_popular(state, limit), []), degraded

        chosen = tuple(source for source in SOURCES if not sources or source.name in sources)

        built: list[CandidateSet] = []
        unsaved: list[UserCacheWrite] = []

        def build() -> bytes:
            _prefetch_sources(state, chosen)
            results, dropped = _sources_run(state, chosen)
            merged = _merge(state, results)[:limit]
            listed = {name: [(c.item_id, c.score) for c in found] for name, found in results.items()}
            features = retrieval_features(listed, [candidate.item_id for candidate in merged])
            built.append(CandidateSet(merged, dropped, unsaved, features))
            payload = built[0].as_bytes()
            # A set missing a late source is served but not cached: the next request tries again.
            return Uncacheable(payload) if dropped else payload

        key = "\x1f".join([
            CANDIDATE_SET_FORMAT, state.model_version or "", str(limit), ",".join(state.favourite_categories),
            ",".join(sources), ",".join(state.seeds), *state.recent_items,
        ])  # fmt: skip
        digest = hashlib.sha1(key.encode())
        # The newest items' shared list as read with the state: an item that appears marks it stale, and the list
        # rebuilt holds it; either moves every cached set on at once (the fresh source is how a new item reaches
        # shelves before any training). Its periodic rebuild to the same items moves nothing.
        digest.update(item_cache_identity(state.prefetched.fresh_items))
        version = digest.hexdigest()[:20]
        try:
            payload = user_cache_get_or_build(
                user_key=state.user_key, name="candidates", version=version, build=build,
                ttl_seconds=CANDIDATE_SET_CACHE_SECONDS, stored=state.prefetched.candidates,
                deferred=unsaved if defer_store else None,
            )  # fmt: skip
        except RedisError:
            payload = build()
        # Built in this request: the set itself (with what is left to store), not its payload decoded again.
        return (built[0] if built else CandidateSet.from_bytes(payload)), degraded
    except DatabaseError as error:
        logger.warning("score.catalog_unavailable", extra={"error": str(error)})
        degraded.append("catalog_unavailable")
        fallback = [
            Candidate(item_id, score, "popular", "Popular right now", ("popular",))
            for item_id, score in state.popular_items
            if item_id not in set(state.recent_items)
        ]
        return CandidateSet(fallback[:limit], []), degraded


# An item's nearest neighbours change only with the catalog and the model: served stale-while-revalidate.
SIMILAR_ITEMS_FRESH_SECONDS = 300
SIMILAR_ITEMS_STALE_SECONDS = 86400
SIMILAR_ITEMS_CACHED = 100


def _similar_items_query(item_id: str) -> list[tuple[str, float]]:
    return similar_to_item_rows(item_id=item_id, k=SIMILAR_ITEMS_CACHED)


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
