"""The items nearest each user's vector, computed in batch (control plane) after each embeddings training, so that
the "user_vector" retrieval source reads one precomputed list with its other read-ahead instead of querying pgvector
(about 1.5 to 2 ms of PostgreSQL CPU, in a pool thread, on every user's first request of a few minutes).

A user's vector changes only when the embeddings are retrained, so the list stays right until the next training.
Exact cosine top-k with implicit's blocked matrix-product top-k (C++), as `graph_app.similar_lists` does for items.
Stock is not filtered here (it changes by the minute): serving checks it, so each list holds 20 more items than
retrieval takes (USER_NEAREST_PER_USER). At most USER_NEAREST_LISTS_MAX_USERS users get one, the most active first
(Redis memory: about 4 KB a user); retrieval queries pgvector for the others, and for users newer than the training.

Each build writes keys of its own and swaps them in, partition by partition (a partition's keys share a Cluster
slot), so a reader sees a user's old list or new one, never a mix.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson
from django.conf import settings

from graph_app.embeddings import normalize_rows
from graph_app.models import Item, Shopper
from graph_app.progress import Progress
from personalization import redis_keys
from personalization.db_router import lag_tolerant_reads
from personalization.redis_client import get_control_redis, swap_in
from personalization.training_compute import training_threads

logger = logging.getLogger(__name__)

# What retrieval takes from a list (scoring_app.engine.retrieval: USER_VECTOR_NEIGHBOURS + RECENT_ITEMS_USED, 120),
# plus room for the items out of stock when it reads the list.
USER_NEAREST_PER_USER = 140
QUERY_BLOCK_ROWS = 4096
PUBLISH_BATCH_SIZE = 1000
SCORE_DECIMALS = 4
# implicit's top-k gives filtered items float32's lowest value; anything this low is no neighbour.
FILTERED_SCORE = -1e30


def user_lists_compute(
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    *,
    k: int = USER_NEAREST_PER_USER,
    exclude: Any = None,
    normalize: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(item indexes, scores) of each user's k best items, best first: cosines (`normalize`) or raw dot products.
    `exclude`: users x items CSR of items left out of each user's list (what they already bought). A zero user
    gets none (index -1), and an item without a vector is nobody's neighbour."""
    from implicit.cpu.topk import topk

    items = np.asarray(item_vectors, dtype=np.float32)
    users = np.asarray(user_vectors, dtype=np.float32)
    if normalize:
        items, users = normalize_rows(items), normalize_rows(users)
    with_vector = np.flatnonzero(items.any(axis=1))
    searched = np.ascontiguousarray(items[with_vector])
    wanted = min(k, len(searched))
    indexes = np.full((len(users), k), -1, dtype=np.int64)
    scores = np.zeros((len(users), k), dtype=np.float32)
    if not wanted:
        return indexes, scores
    if exclude is not None:
        exclude = exclude[:, with_vector].tocsr()  # in the searched items' numbering
    has_vector = users.any(axis=1)
    if len(searched) > settings.SIMILAR_LISTS_EXACT_MAX_ITEMS:
        # Exact top-k over a million items for 100,000 users is an hour of a core: approximate, as the items'
        # similar lists are above the same size.
        from graph_app.similar_lists import ann_top_k

        found, found_scores = ann_top_k(searched, users, wanted, name="user_lists", exclude=exclude)
        valid = (found >= 0) & has_vector[:, None]
        indexes[:, :wanted] = np.where(valid, with_vector[np.maximum(found, 0)], -1)
        scores[:, :wanted] = np.where(valid, found_scores, 0.0)
        return indexes, scores
    progress = Progress("user_lists: users' nearest items", total=len(users))
    for start in range(0, len(users), QUERY_BLOCK_ROWS):
        block = np.ascontiguousarray(users[start : start + QUERY_BLOCK_ROWS])
        filtered = exclude[start : start + len(block)] if exclude is not None else None
        found, found_scores = topk(searched, block, wanted, filter_query_items=filtered, num_threads=training_threads())
        # Filtered items come back last with the lowest float32 score, not -inf.
        valid = (found >= 0) & (found_scores > FILTERED_SCORE) & has_vector[start : start + len(block), None]
        rows = slice(start, start + len(block))
        indexes[rows, :wanted] = np.where(valid, with_vector[np.maximum(found, 0)], -1)
        scores[rows, :wanted] = np.where(valid, found_scores, 0.0)
        progress.advance(len(block))
    progress.finish()
    return indexes, scores


def user_lists_publish(
    *,
    user_ids: Sequence[str],
    user_vectors: np.ndarray,
    item_ids: Sequence[str],
    item_vectors: np.ndarray,
    k: int = USER_NEAREST_PER_USER,
    exclude: Any = None,
) -> int:
    """Compute and publish the lists of the first USER_NEAREST_LISTS_MAX_USERS users (`user_ids` in priority
    order); returns how many users have one. Lists of users left out are removed with the old build. With
    `exclude` (users x items CSR, rows in `user_ids` order: what each user bought), the lists rank the raw
    vectors' dot products and leave those items out (the embeddings training); without it, cosines."""
    limit = max(0, settings.USER_NEAREST_LISTS_MAX_USERS)
    chosen_ids = list(user_ids[:limit])
    indexes, scores = user_lists_compute(
        user_vectors[: len(chosen_ids)], item_vectors, k=k,
        exclude=exclude[: len(chosen_ids)] if exclude is not None else None, normalize=exclude is None,
    )  # fmt: skip
    return ranked_lists_publish(
        key=redis_keys.user_nearest_lists, user_ids=chosen_ids, item_ids=item_ids, indexes=indexes, scores=scores,
        decimals=SCORE_DECIMALS, name="user_vector",
    )  # fmt: skip


def ranked_lists_publish(
    *,
    key: Callable[[int], str],
    user_ids: Sequence[str],
    item_ids: Sequence[str],
    indexes: np.ndarray,
    scores: np.ndarray,
    decimals: int,
    name: str,
) -> int:
    """Publish each user's list (rows of `indexes` into `item_ids`, -1 for none, with `scores`) in the per-partition
    hashes `key(partition)`, built under staging keys and swapped in partition by partition; users without an item
    get none, and lists of users left out go with the old build. Returns how many users have one."""
    started = time.monotonic()
    client = get_control_redis()
    run = uuid.uuid4().hex
    batches: dict[int, dict[str, bytes]] = {}
    published = 0

    def flush(partition: int) -> None:
        client.hset(redis_keys.staging(key(partition), run), mapping=batches.pop(partition))

    progress = Progress(f"{name} lists: users published", total=len(user_ids))
    for row, user_id in enumerate(user_ids):
        progress.advance()
        found = indexes[row] >= 0
        if not found.any():
            continue
        payload = orjson.dumps([
            (item_ids[index], round(float(score), decimals))
            for index, score in zip(indexes[row][found], scores[row][found], strict=True)
        ])  # fmt: skip
        partition = redis_keys.partition_of(user_id)
        batch = batches.setdefault(partition, {})
        batch[user_id] = payload
        published += 1
        if len(batch) >= PUBLISH_BATCH_SIZE:
            flush(partition)
    for partition in list(batches):
        flush(partition)
    progress.finish()
    for partition in redis_keys.partitions():
        served = key(partition)
        swap_in(client, key=served, staging=redis_keys.staging(served, run))
    logger.info(
        "graph.user_lists_published",
        extra={"lists": name, "users": published, "seconds": round(time.monotonic() - started, 1)},
    )
    return published


@lag_tolerant_reads()
def user_lists_refresh(*, k: int = USER_NEAREST_PER_USER) -> int:
    """The lists from the embeddings stored in PostgreSQL (a repair, or a deployment upgrading to them); users in
    id order, as this path does not read the log to rank them by activity."""
    users = list(
        Shopper.objects.filter(embedding__isnull=False)
        .order_by("external_id")
        .values_list("external_id", "embedding")[: max(0, settings.USER_NEAREST_LISTS_MAX_USERS)]
    )
    items = list(
        Item.objects.filter(embedding__isnull=False).order_by("external_id").values_list("external_id", "embedding")
    )
    if not users or not items:
        return user_lists_publish(
            user_ids=[], user_vectors=np.zeros((0, 1)), item_ids=[], item_vectors=np.zeros((0, 1)), k=k
        )
    return user_lists_publish(
        user_ids=[user_id for user_id, _ in users],
        user_vectors=np.array([vector for _, vector in users], dtype=np.float32),
        item_ids=[item_id for item_id, _ in items],
        item_vectors=np.array([vector for _, vector in items], dtype=np.float32),
        k=k,
    )
