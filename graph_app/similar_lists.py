"""Every item's nearest items by embedding, computed in batch (control plane) so that the "similar to your recent
items" retrieval source reads a few precomputed lists instead of querying pgvector in the request.

Exact cosine top-k over the catalog's embeddings with implicit's blocked matrix-product top-k (C++, threaded) up to
settings.SIMILAR_LISTS_EXACT_MAX_ITEMS items (a million items would take about 20 minutes of a core), approximate
above (faiss's inverted-file index, a few minutes), after each embeddings training and on demand
(`similar_lists_refresh`). Stock is not filtered here (it changes by the minute): serving checks it. The lists are
built under a key of their own and swapped in, so a reader sees the old lists or the new ones, never a mix. An item
missing from them (newer than the last training) makes serving fall back to pgvector for that user
(`scoring_app.engine.retrieval`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from django.conf import settings

from graph_app.embeddings import normalize_rows
from graph_app.models import Item
from graph_app.progress import Progress
from personalization import redis_keys
from personalization.redis_client import get_control_redis, swap_in

logger = logging.getLogger(__name__)

SIMILAR_PER_ITEM = 30
QUERY_BLOCK_ROWS = 4096
PUBLISH_BATCH_SIZE = 2000
SCORE_DECIMALS = 5
# Above settings.SIMILAR_LISTS_EXACT_MAX_ITEMS items the lists come from an inverted-file index: about 4 x sqrt(items)
# k-means cells, ANN_PROBE_CELLS of them searched per item (recall@30 about 0.96 on clustered 64-dim vectors).
ANN_CELLS_PER_SQRT_ITEMS = 4.0
ANN_PROBE_CELLS = 32
ANN_QUERY_BLOCK_ROWS = 20_000
# k-means on 40 sampled items a cell (faiss's minimum for a stable clustering), ten rounds: the cells need only
# be good enough that the nearest items of an item sit in its ANN_PROBE_CELLS nearest cells.
ANN_KMEANS_ITERATIONS = 10
ANN_SEED = 20261207


def similar_lists_compute(
    vectors: np.ndarray, *, k: int = SIMILAR_PER_ITEM, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(indexes, cosines) of each row's k nearest other rows, nearest first. Rows are normalized here; a zero row
    gets no neighbours (index -1). `rows`: only these rows' lists are computed (the others get none).

    Exact up to settings.SIMILAR_LISTS_EXACT_MAX_ITEMS rows with a vector; above, approximate (`_ann_search`)."""
    matrix = np.ascontiguousarray(normalize_rows(np.asarray(vectors, dtype=np.float32)))
    indexes = np.full((len(matrix), k), -1, dtype=np.int64)
    scores = np.zeros((len(matrix), k), dtype=np.float32)
    has_vector = matrix.any(axis=1)
    queried = np.flatnonzero(has_vector) if rows is None else np.asarray(rows, dtype=np.int64)[has_vector[rows]]
    if not len(queried):
        return indexes, scores
    if int(has_vector.sum()) > settings.SIMILAR_LISTS_EXACT_MAX_ITEMS:
        found, cosines = _ann_search(matrix, has_vector, queried, k + 1)
    else:
        found, cosines = _exact_search(matrix, queried, min(k + 1, len(matrix)))
    for offset, row in enumerate(queried.tolist()):
        # Not the row itself, nor an item without a vector (a cosine of 0 to everything).
        keep = (found[offset] >= 0) & (found[offset] != row) & np.isfinite(cosines[offset])
        keep &= has_vector[np.maximum(found[offset], 0)]
        chosen = found[offset][keep][:k]
        indexes[row, : len(chosen)] = chosen
        scores[row, : len(chosen)] = cosines[offset][keep][:k]
    return indexes, scores


def _exact_search(matrix: np.ndarray, queried: np.ndarray, wanted: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top `wanted` by cosine of each queried row over every row (the row itself included), by blocks."""
    from implicit.cpu.topk import topk

    found = np.full((len(queried), wanted), -1, dtype=np.int64)
    cosines = np.zeros((len(queried), wanted), dtype=np.float32)
    progress = Progress("similar_lists: exact search, items", total=len(queried))
    for start in range(0, len(queried), QUERY_BLOCK_ROWS):
        block = matrix[queried[start : start + QUERY_BLOCK_ROWS]]
        block_found, block_cosines = topk(matrix, block, wanted)
        found[start : start + len(block)] = block_found
        cosines[start : start + len(block)] = block_cosines
        progress.advance(len(block))
    progress.finish()
    return found, cosines


def _ann_search(
    matrix: np.ndarray, has_vector: np.ndarray, queried: np.ndarray, wanted: int
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate top `wanted` by cosine (inner product of unit rows) of each queried row (see ann_top_k)."""
    indexed = np.flatnonzero(has_vector)
    found, cosines = ann_top_k(matrix[indexed], matrix[queried], wanted, name="similar_lists")
    return np.where(found >= 0, indexed[np.maximum(found, 0)], -1), cosines


def ann_top_k(
    items: np.ndarray, queries: np.ndarray, k: int, *, name: str, exclude: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """(item rows, inner products) of each query's approximate k best `items` rows, best first (-1 where fewer),
    with faiss's inverted-file index: k-means cells (ANN_CELLS_PER_SQRT_ITEMS x sqrt(items)), each query's
    ANN_PROBE_CELLS nearest cells searched exactly. `exclude`: queries x items CSR of rows left out of each list
    (the search asks for that many more). Single-threaded, seeded: the same vectors give the same lists. Recall
    against exact search: BENCHMARKS.md ("Training at 1 M items ...")."""
    import faiss

    faiss.omp_set_num_threads(1)  # training shares the machine with serving, as ALS's one BLAS thread does
    vectors = np.ascontiguousarray(items, dtype=np.float32)
    cells = max(1, min(len(vectors) // 40, int(ANN_CELLS_PER_SQRT_ITEMS * np.sqrt(len(vectors)))))
    started = time.monotonic()
    quantizer = faiss.IndexFlatIP(vectors.shape[1])
    index = faiss.IndexIVFFlat(quantizer, vectors.shape[1], cells, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = ANN_KMEANS_ITERATIONS
    index.cp.seed = ANN_SEED
    sample = np.random.default_rng(ANN_SEED).choice(len(vectors), min(len(vectors), cells * 40), replace=False)
    index.train(vectors[np.sort(sample)])
    index.add(vectors)
    index.nprobe = min(cells, ANN_PROBE_CELLS)
    logger.info(
        "graph.ann_index_built",
        extra={"lists": name, "items": len(vectors), "cells": cells, "seconds": round(time.monotonic() - started, 1)},
    )
    found = np.full((len(queries), k), -1, dtype=np.int64)
    scores = np.zeros((len(queries), k), dtype=np.float32)
    progress = Progress(f"{name}: approximate search, queries", total=len(queries))
    for start in range(0, len(queries), ANN_QUERY_BLOCK_ROWS):
        block = np.ascontiguousarray(queries[start : start + ANN_QUERY_BLOCK_ROWS], dtype=np.float32)
        left_out = exclude[start : start + len(block)] if exclude is not None else None
        extra = int(np.diff(left_out.indptr).max()) if left_out is not None and left_out.nnz else 0
        block_scores, block_found = index.search(block, min(len(vectors), k + extra))
        if left_out is not None and extra:
            for row in range(len(block)):
                gone = left_out.indices[left_out.indptr[row] : left_out.indptr[row + 1]]
                keep = np.flatnonzero(~np.isin(block_found[row], gone))[:k]
                found[start + row, : len(keep)] = block_found[row][keep]
                scores[start + row, : len(keep)] = block_scores[row][keep]
        else:
            found[start : start + len(block), : block_found.shape[1]] = block_found[:, :k]
            scores[start : start + len(block), : block_found.shape[1]] = block_scores[:, :k]
        progress.advance(len(block))
    progress.finish()
    return np.where(found >= 0, found, -1), np.where(found >= 0, scores, 0.0).astype(np.float32)


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
    progress = Progress("similar_lists: items published", total=len(item_ids))
    for row, item_id in enumerate(item_ids):
        progress.advance()
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
    progress.finish()
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
