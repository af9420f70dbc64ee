"""Every item's nearest items by embedding, computed in batch (control plane) so that the "similar to your recent
items" retrieval source reads a few precomputed lists instead of querying pgvector in the request.

Exact cosine top-k over the catalog's embeddings with implicit's blocked matrix-product top-k (C++, threaded), after
each embeddings training and on demand (`similar_lists_refresh`). Stock is not filtered here (it changes by the
minute): serving checks it. The lists are built under a key of their own and swapped in, so a reader sees the old
lists or the new ones, never a mix. An item missing from them (newer than the last training)
makes serving fall back to pgvector for that user (`scoring_app.engine.retrieval`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence

import numpy as np
import orjson

from graph_app.embeddings import normalize_rows
from graph_app.models import Item
from personalization import redis_keys
from personalization.redis_client import get_control_redis, swap_in

logger = logging.getLogger(__name__)

SIMILAR_PER_ITEM = 30
QUERY_BLOCK_ROWS = 4096
PUBLISH_BATCH_SIZE = 2000
SCORE_DECIMALS = 5


def similar_lists_compute(vectors: np.ndarray, *, k: int = SIMILAR_PER_ITEM) -> tuple[np.ndarray, np.ndarray]:
    """(indexes, cosines) of each row's k nearest other rows, nearest first. Rows are normalized here; a zero row
    gets no neighbours (index -1)."""
    from implicit.cpu.topk import topk

    matrix = np.ascontiguousarray(normalize_rows(np.asarray(vectors, dtype=np.float32)))
    wanted = min(k + 1, len(matrix))  # the row itself comes back too
    indexes = np.full((len(matrix), k), -1, dtype=np.int64)
    scores = np.zeros((len(matrix), k), dtype=np.float32)
    has_vector = matrix.any(axis=1)
    for start in range(0, len(matrix), QUERY_BLOCK_ROWS):
        block = matrix[start : start + QUERY_BLOCK_ROWS]
        found, cosines = topk(matrix, block, wanted)
        for offset in range(len(block)):
            row = start + offset
            if not has_vector[row]:
                continue
            # Not the row itself, nor an item without a vector (a cosine of 0 to everything).
            keep = (found[offset] >= 0) & (found[offset] != row) & np.isfinite(cosines[offset])
            keep &= has_vector[np.maximum(found[offset], 0)]
            chosen = found[offset][keep][:k]
            indexes[row, : len(chosen)] = chosen
            scores[row, : len(chosen)] = cosines[offset][keep][:k]
    return indexes, scores


def similar_lists_publish(*, item_ids: Sequence[str], vectors: np.ndarray, k: int = SIMILAR_PER_ITEM) -> int:
    """Compute and publish every item's list; returns how many items have one."""
    started = time.monotonic()
    indexes, scores = similar_lists_compute(vectors, k=k)
    client = get_control_redis()
    # A key of this build's own: two builds at once (training and a repair) cannot mix their lists.
    run = uuid.uuid4().hex
    staging = redis_keys.staging(redis_keys.ITEM_SIMILAR_LISTS, run)
    published = 0
    batch: dict[str, bytes] = {}
    for row, item_id in enumerate(item_ids):
        chosen = [
            (item_ids[index], round(float(score), SCORE_DECIMALS))
            for index, score in zip(indexes[row], scores[row], strict=True)
            if index >= 0
        ]
        if not chosen:
            continue
        batch[item_id] = orjson.dumps(chosen)
        published += 1
        if len(batch) >= PUBLISH_BATCH_SIZE:
            client.hset(staging, mapping=batch)
            batch = {}
    if batch:
        client.hset(staging, mapping=batch)
    swap_in(client, key=redis_keys.ITEM_SIMILAR_LISTS, staging=staging)
    logger.info(
        "graph.similar_lists_published", extra={"items": published, "seconds": round(time.monotonic() - started, 1)}
    )
    return published


def similar_lists_refresh(*, k: int = SIMILAR_PER_ITEM) -> int:
    """The lists from the embeddings stored in PostgreSQL (a repair, or a deployment upgrading to them)."""
    rows = list(
        Item.objects.filter(embedding__isnull=False).order_by("external_id").values_list("external_id", "embedding")
    )
    if not rows:
        get_control_redis().unlink(redis_keys.ITEM_SIMILAR_LISTS)
        return 0
    vectors = np.array([vector for _, vector in rows], dtype=np.float32)
    return similar_lists_publish(item_ids=[item_id for item_id, _ in rows], vectors=vectors, k=k)
