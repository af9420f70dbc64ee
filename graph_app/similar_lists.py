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
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import orjson
from django.conf import settings

from graph_app.embeddings import normalize_rows
from graph_app.models import Item
from graph_app.progress import Progress
from personalization import redis_keys
from personalization.db_router import lag_tolerant_reads
from personalization.redis_client import get_control_redis, swap_in
from personalization.training_compute import training_threads, training_threads_used

logger = logging.getLogger(__name__)

SIMILAR_PER_ITEM = 30
QUERY_BLOCK_ROWS = 4096
PUBLISH_BATCH_SIZE = 2000
SCORE_DECIMALS = 5
# Above settings.SIMILAR_LISTS_EXACT_MAX_ITEMS items the lists come from an inverted file (`ann_top_k`): about
# 4 x sqrt(items) k-means cells, the ANN_PROBE_CELLS best of them searched for each group of queries (32 cells:
# recall@30 0.90 on 200,000 clustered 64-dim vectors).
ANN_CELLS_PER_SQRT_ITEMS = 4.0
ANN_PROBE_CELLS = 48
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
    """(item rows, inner products) of each query's approximate k best `items` rows, best first (-1 where fewer).

    An inverted file searched cell by cell: faiss's k-means splits the items into cells (ANN_CELLS_PER_SQRT_ITEMS x
    sqrt(items)); the queries are grouped by their best cell, and each group is scored exactly (one matrix product,
    implicit's top-k) against the items of the ANN_PROBE_CELLS cells best for the group's mean query. faiss's own
    IVF search scans the cells query by query: on this machine about ten times slower than one product per group.
    `exclude`: queries x items CSR of rows left out of each list (the search asks for that many more).
    Seeded: the same vectors give the same lists. Recall against exact search:
    BENCHMARKS.md ("Training at 1 M items ...")."""
    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(training_threads())
    vectors = np.ascontiguousarray(items, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    found = np.full((len(queries), k), -1, dtype=np.int64)
    scores = np.zeros((len(queries), k), dtype=np.float32)
    if not len(vectors) or not len(queries):
        return found, scores
    started = time.monotonic()
    cells = max(1, min(len(vectors) // 40, int(ANN_CELLS_PER_SQRT_ITEMS * np.sqrt(len(vectors)))))
    sample = np.sort(np.random.default_rng(ANN_SEED).choice(len(vectors), min(len(vectors), cells * 40), replace=False))
    kmeans = faiss.Kmeans(vectors.shape[1], cells, niter=ANN_KMEANS_ITERATIONS, seed=ANN_SEED, verbose=False)
    kmeans.train(vectors[sample])
    centroids = kmeans.centroids
    _, item_cell = kmeans.index.search(vectors, 1)
    item_cell = item_cell.ravel()
    by_cell = np.argsort(item_cell, kind="stable")
    bounds = np.searchsorted(item_cell[by_cell], np.arange(cells + 1))
    with training_threads_used():
        query_cell = np.concatenate(
            [
                np.argmax(queries[start : start + 20_000] @ centroids.T, axis=1)
                for start in range(0, len(queries), 20_000)
            ]
        )
    logger.info(
        "graph.ann_cells_built",
        extra={"lists": name, "items": len(vectors), "cells": cells, "seconds": round(time.monotonic() - started, 1)},
    )
    groups = np.argsort(query_cell, kind="stable")
    group_bounds = np.flatnonzero(np.diff(query_cell[groups])) + 1
    probes = min(cells, ANN_PROBE_CELLS)
    progress = Progress(f"{name}: approximate search, queries", total=len(queries))

    def group_search(members: np.ndarray) -> int:
        mean = queries[members].mean(axis=0)
        chosen_cells = np.argpartition(-(centroids @ mean), probes - 1)[:probes] if probes < cells else np.arange(cells)
        candidates = np.concatenate([by_cell[bounds[cell] : bounds[cell + 1]] for cell in chosen_cells])
        left_out = exclude[members] if exclude is not None else None
        extra = int(np.diff(left_out.indptr).max()) if left_out is not None and left_out.nnz else 0
        wanted = min(len(candidates), k + extra)
        if wanted:
            products = queries[members] @ vectors[candidates].T
            best = np.argpartition(-products, wanted - 1, axis=1)[:, :wanted] if wanted < len(candidates) else None
            if best is None:
                best = np.broadcast_to(np.arange(len(candidates)), products.shape)
            best_scores = np.take_along_axis(products, best, axis=1)
            order = np.argsort(-best_scores, axis=1, kind="stable")
            rows = candidates[np.take_along_axis(best, order, axis=1)]
            block_scores = np.take_along_axis(best_scores, order, axis=1)
            if extra:
                for position, query in enumerate(members.tolist()):
                    gone = left_out.indices[left_out.indptr[position] : left_out.indptr[position + 1]]
                    keep = np.flatnonzero(~np.isin(rows[position], gone))[:k]
                    found[query, : len(keep)] = rows[position][keep]
                    scores[query, : len(keep)] = block_scores[position][keep]
            else:
                found[members, :wanted] = rows[:, :k]
                scores[members, :wanted] = block_scores[:, :k]
        return len(members)

    # Groups in parallel, one BLAS thread each: most of a group's time is numpy's partition and sort, which
    # release the GIL but run on one core; each group writes only its own queries' rows.
    with threadpool_limits(1), ThreadPoolExecutor(max_workers=training_threads()) as pool:
        for searched in pool.map(group_search, np.split(groups, group_bounds)):
            progress.advance(searched)
    progress.finish()
    return found, scores


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


@lag_tolerant_reads()
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
