"""One-hop neighbourhoods of the knowledge graph: for every item, its most related items and why (control plane).

Two kinds of evidence, each scaled to about [0, 1] so that they can be added:

- Shared entities: the sum over shared entities of idf(e) * w(item, e) * w(other, e), where
  idf(e) = ln(N / n_e) / ln(N) (N items in the catalog, n_e of them linked to e), so a niche collection counts
  for much more than a category half the catalog shares.
- Co-occurrence in the event log: users who interacted with both items (event types of positive weight, over a
  window), as the cosine of the two items' user sets, |U_i & U_j| / sqrt(|U_i| |U_j|), so very popular items
  do not become everybody's neighbour; pairs seen by fewer than CO_OCCURRENCE_MIN_USERS users are noise.

An item's neighbours are the K with the highest sum; each keeps the component that contributed more as its
`source`, and as `via` the strongest shared entity ("kind:id") or "co-occurrence". Similarities are computed as
sparse matrix products in blocks of rows, so memory stays bounded by the block, not the catalog squared.

The result replaces `ItemNeighbour` in one transaction (the admin's view) and, after commit, is published to
Redis, one key per item (what the hot path reads, see `graph_app.neighbourhoods_online`).
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
from django.db import connection, transaction
from django.utils import timezone
from scipy import sparse

from graph_app.neighbourhoods_online import SOURCE_CO_OCCURRENCE, SOURCE_ENTITY, Neighbour, neighbours_encode
from graph_app.progress import Progress
from graph_app.state.event_types import BUILT_IN_EVENT_TYPES
from graph_app.state.log_reads import user_items_in_window
from personalization import redis_keys
from personalization.db_router import lag_tolerant_reads, read_connection
from personalization.redis_client import get_control_redis
from personalization.training_compute import training_threads

logger = logging.getLogger(__name__)

NEIGHBOURS_PER_ITEM = 20
CO_OCCURRENCE_WINDOW_DAYS = 90
CO_OCCURRENCE_MIN_USERS = 2
# A user with more distinct items than this (a crawler, a reseller) says little about pairs and costs quadratically.
CO_OCCURRENCE_MAX_ITEMS_PER_USER = 1000
# Items whose similarity rows are computed at once: bounds the memory of the sparse products.
SIMILARITY_BLOCK_ROWS = 1000
# Members of an entity an item's candidates through it come from (see neighbourhoods_compute).
ENTITY_CANDIDATES_MAX = 200
PUBLISH_BATCH_SIZE = 1000
SCORE_DECIMALS = 6


@dataclass(frozen=True)
class NeighbourhoodsReport:
    items: int
    items_with_neighbours: int
    neighbours: int
    entity_neighbours: int
    co_occurrence_neighbours: int
    users: int
    seconds: float


@dataclass(frozen=True)
class _Catalog:
    item_ids: list[str]  # in byte order, so a lower row index is a lower item id
    titles: list[str]
    entity_keys: list[str]  # "kind:id", sorted by (kind, id)
    entity_names: list[str]
    links: sparse.csr_matrix  # items x entities, relation weights
    idf: np.ndarray  # per entity


@dataclass(frozen=True)
class _Result:
    """Every item's neighbours as flat arrays: item i's are [offsets[i], offsets[i + 1])."""

    offsets: np.ndarray
    neighbours: np.ndarray
    scores: np.ndarray
    via_entity: np.ndarray  # entity index, or -1 when the source is co-occurrence
    users: int


@lag_tolerant_reads()
def _catalog_load() -> _Catalog:
    with read_connection().cursor() as cursor:
        # Byte order (not the server's collation), so that ties between neighbours break the same way everywhere.
        cursor.execute('SELECT id, external_id, title FROM graph_app_item ORDER BY external_id COLLATE "C"')
        items = cursor.fetchall()
        cursor.execute(
            "SELECT id, kind, external_id, name FROM graph_app_entity "
            'ORDER BY kind COLLATE "C", external_id COLLATE "C"'
        )
        entities = cursor.fetchall()
        cursor.execute("SELECT item_id, entity_id, weight FROM graph_app_itementity")
        links = cursor.fetchall()
    row_of = {pk: row for row, (pk, _, _) in enumerate(items)}
    column_of = {pk: column for column, (pk, _, _, _) in enumerate(entities)}
    matrix = sparse.csr_matrix(
        (
            np.asarray([weight for _, _, weight in links], dtype=np.float64),
            ([row_of[item] for item, _, _ in links], [column_of[entity] for _, entity, _ in links]),
        ),
        shape=(len(items), len(entities)),
    )
    matrix.sort_indices()
    item_count = len(items)
    linked = np.diff(matrix.tocsc().indptr).astype(np.float64)
    idf = np.zeros(len(entities), dtype=np.float64)
    if item_count > 1:
        used = linked > 0
        idf[used] = np.log(item_count / linked[used]) / math.log(item_count)
    return _Catalog(
        item_ids=[external_id for _, external_id, _ in items],
        titles=[title for _, _, title in items],
        entity_keys=[f"{kind}:{external_id}" for _, kind, external_id, _ in entities],
        entity_names=[name for _, _, _, name in entities],
        links=matrix,
        idf=idf,
    )


@lag_tolerant_reads()
def _interactions_load(*, catalog: _Catalog, since: datetime, now: datetime) -> tuple[sparse.csr_matrix, int]:
    """items x users, 1 where the user interacted with the item in the window; and the number of users."""
    types = [name for name, kind in BUILT_IN_EVENT_TYPES.items() if kind.popularity_weight > 0]
    row_of = {item_id: row for row, item_id in enumerate(catalog.item_ids)}
    indptr, indices = [0], []
    for _, item_ids in user_items_in_window(types=types, since=since, now=now):
        if len(item_ids) > CO_OCCURRENCE_MAX_ITEMS_PER_USER:
            continue
        indices.extend(row_of[item_id] for item_id in item_ids)
        indptr.append(len(indices))
    users = len(indptr) - 1
    user_items = sparse.csr_matrix(
        (np.ones(len(indices), dtype=np.float32), np.asarray(indices, dtype=np.int32), np.asarray(indptr)),
        shape=(users, len(catalog.item_ids)),
    )
    return user_items.T.tocsr(), users


def _block_top(total: sparse.csr_matrix, start: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's k best other items (row `r` is item start + r), as (rows, items, scores) in row order: highest
    score (rounded to SCORE_DECIMALS) first, then lowest index (item id), so ties are stable. One sort a block."""
    rows = np.repeat(np.arange(total.shape[0]), np.diff(total.indptr))
    keep = (total.indices != rows + start) & (total.data > 0)
    rows, items, values = rows[keep], total.indices[keep], np.round(total.data[keep], SCORE_DECIMALS)
    order = np.lexsort((items, -values, rows))
    rows, items, values = rows[order], items[order], values[order]
    firsts = np.searchsorted(rows, rows)  # the first position of each entry's row
    chosen = np.arange(len(rows)) - firsts < k
    return rows[chosen], items[chosen], values[chosen]


def _csr_keys(matrix: sparse.csr_matrix) -> np.ndarray:
    """row * width + column of each stored entry: ascending in a CSR matrix with sorted indices."""
    rows = np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(matrix.indptr))
    return rows * np.int64(matrix.shape[1]) + matrix.indices


def _block_lookup(
    matrix: sparse.csr_matrix, rows: np.ndarray, columns: np.ndarray, keys: np.ndarray | None = None
) -> np.ndarray:
    """matrix[rows[i], columns[i]] for each i (0 where absent) of a CSR matrix with sorted indices (`keys`: its
    _csr_keys, when already computed)."""
    if not matrix.nnz or not len(rows):
        return np.zeros(len(rows))
    keys = _csr_keys(matrix) if keys is None else keys
    wanted = rows.astype(np.int64) * np.int64(matrix.shape[1]) + columns
    positions = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    return np.where(keys[positions] == wanted, matrix.data[positions], 0.0)


def _links_of(links: sparse.csr_matrix, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every stored entry of each of `items`' rows: (position in `items`, entry index in links.data/indices)."""
    counts = np.diff(links.indptr)[items]
    pair = np.repeat(np.arange(len(items)), counts)
    starts = np.repeat(links.indptr[items], counts)
    return pair, starts + np.arange(len(pair)) - np.repeat(np.cumsum(counts) - counts, counts)


def _strongest_entities(catalog: _Catalog, items: np.ndarray, others: np.ndarray, link_keys: np.ndarray) -> np.ndarray:
    """For each pair, the shared entity that contributes most to its score, idf(e) * w(item, e) * w(other, e)
    (-1 if none); entities are indexed in (kind, id) order, so on a tie the first one wins. `link_keys`: the
    _csr_keys of catalog.links."""
    links = catalog.links
    pair, link = _links_of(links, items)
    entities = links.indices[link]
    theirs = _block_lookup(links, others[pair], entities, link_keys)
    contribution = catalog.idf[entities] * links.data[link] * theirs
    order = np.lexsort((entities, -contribution, pair))
    pair, entities, contribution = pair[order], entities[order], contribution[order]
    first = np.ones(len(pair), dtype=bool)
    first[1:] = pair[1:] != pair[:-1]
    best = np.full(len(items), -1, dtype=np.int32)
    chosen = first & (contribution > 0)
    best[pair[chosen]] = entities[chosen]
    return best


def _members_capped(links_t: sparse.csr_matrix, cap: int) -> sparse.csr_matrix | None:
    """entities x items with each entity's members cut to its `cap` strongest (highest weight, then lowest item
    index); None when no entity has more."""
    sizes = np.diff(links_t.indptr)
    if not len(sizes) or sizes.max() <= cap:
        return None
    keep = np.ones(links_t.nnz, dtype=bool)
    for entity in np.flatnonzero(sizes > cap).tolist():
        start, end = links_t.indptr[entity], links_t.indptr[entity + 1]
        order = np.lexsort((links_t.indices[start:end], -links_t.data[start:end]))
        keep[start + order[cap:]] = False
    rows = np.repeat(np.arange(links_t.shape[0]), sizes)
    return sparse.csr_matrix((links_t.data[keep], (rows[keep], links_t.indices[keep])), shape=links_t.shape).tocsr()


def _entity_values(
    weighted_block: sparse.csr_matrix, links: sparse.csr_matrix, pattern: sparse.csr_matrix
) -> sparse.csr_matrix:
    """The exact shared-entity score of each (row, item) pair of `pattern` (block rows x items): the dot product of
    the row's idf-weighted links with the item's links, for those pairs only."""
    block_entities = np.unique(weighted_block.indices)
    dense = weighted_block[:, block_entities].toarray()
    local = np.full(links.shape[1], -1, dtype=np.int64)
    local[block_entities] = np.arange(len(block_entities))
    pair_rows = np.repeat(np.arange(pattern.shape[0]), np.diff(pattern.indptr))
    items = pattern.indices
    pair_of_link, link = _links_of(links, items)
    column = local[links.indices[link]]
    contributions = np.where(column >= 0, dense[pair_rows[pair_of_link], np.maximum(column, 0)] * links.data[link], 0.0)
    values = np.bincount(pair_of_link, weights=contributions, minlength=len(items))
    result = sparse.csr_matrix((values, items.copy(), pattern.indptr.copy()), shape=pattern.shape)
    result.eliminate_zeros()
    return result


def neighbourhoods_compute(*, catalog: _Catalog, item_users: sparse.csr_matrix, users: int, k: int) -> _Result:
    item_count = len(catalog.item_ids)
    weighted_links = catalog.links.multiply(catalog.idf[None, :]).tocsr() if len(catalog.idf) else catalog.links
    links_t = catalog.links.T.tocsr()
    # A brand of a million-item catalog has thousands of items, all equally similar through it: the pairs through
    # it would be billions. An item's candidates through an entity are its ENTITY_CANDIDATES_MAX strongest members
    # (the others could only tie with them, and ties go to the lower index, which they have); every candidate's
    # score is then computed exactly, co-occurrence candidates' included. Exact unless an item shares two such
    # big entities with a member left out of both (which then misses its higher score).
    capped_t = _members_capped(links_t, max(k + 1, ENTITY_CANDIDATES_MAX))
    users_t = item_users.T.tocsr()
    link_keys = _csr_keys(catalog.links)
    user_counts = np.asarray(item_users.sum(axis=1)).ravel()
    offsets = np.zeros(item_count + 1, dtype=np.int64)
    neighbours: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    via_entity: list[np.ndarray] = []
    progress = Progress("neighbourhoods: items", total=item_count)

    def block_neighbours(start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The block's (row of each neighbour in the block, neighbour items, scores, strongest shared entity)."""
        stop = min(start + SIMILARITY_BLOCK_ROWS, item_count)
        co_block = (item_users[start:stop] @ users_t).tocsr().astype(np.float64)
        co_block.data[co_block.data < CO_OCCURRENCE_MIN_USERS] = 0
        co_block.eliminate_zeros()
        co_block.sort_indices()
        if capped_t is None:
            entity_block = (weighted_links[start:stop] @ links_t).tocsr()
        else:
            pattern = ((weighted_links[start:stop] @ capped_t) + co_block).tocsr()
            pattern.sort_indices()
            entity_block = _entity_values(weighted_links[start:stop], catalog.links, pattern)
        # Cosine of the user sets: divide each count by sqrt(|U_i| |U_j|).
        rows = np.repeat(np.arange(start, stop), np.diff(co_block.indptr))
        co_block.data /= np.sqrt(user_counts[rows] * user_counts[co_block.indices])
        entity_block.sort_indices()
        total = (entity_block + co_block).tocsr()
        total.sort_indices()
        rows, items, values = _block_top(total, start, k)
        via = np.full(len(items), -1, dtype=np.int32)
        from_entities = _block_lookup(entity_block, rows, items)
        by_entity = np.flatnonzero((from_entities >= _block_lookup(co_block, rows, items)) & (from_entities > 0))
        via[by_entity] = _strongest_entities(catalog, rows[by_entity] + start, items[by_entity], link_keys)
        return rows, items.astype(np.int32), values, via

    # Blocks in parallel: scipy's sparse products and numpy's sorts release the GIL; the results are taken in
    # block order, so the output is the same whatever the threads.
    starts = range(0, item_count, SIMILARITY_BLOCK_ROWS)
    with ThreadPoolExecutor(max_workers=training_threads()) as pool:
        for start, (rows, items, values, via) in zip(starts, pool.map(block_neighbours, starts), strict=True):
            stop = min(start + SIMILARITY_BLOCK_ROWS, item_count)
            neighbours.append(items)
            scores.append(values)
            via_entity.append(via)
            offsets[start + 1 : stop + 1] = offsets[start] + np.cumsum(np.bincount(rows, minlength=stop - start))
            progress.advance(stop - start)
    progress.finish()
    empty_int = np.zeros(0, dtype=np.int32)
    return _Result(
        offsets=offsets,
        neighbours=np.concatenate(neighbours) if neighbours else empty_int,
        scores=np.concatenate(scores) if scores else np.zeros(0),
        via_entity=np.concatenate(via_entity) if via_entity else empty_int,
        users=users,
    )


def _item_neighbours(catalog: _Catalog, result: _Result, item: int) -> list[Neighbour]:
    start, stop = int(result.offsets[item]), int(result.offsets[item + 1])
    title = catalog.titles[item]
    neighbours = []
    for other, score, entity in zip(
        result.neighbours[start:stop].tolist(),
        result.scores[start:stop].tolist(),
        result.via_entity[start:stop].tolist(),
        strict=True,
    ):
        if entity >= 0:
            neighbour = Neighbour(
                catalog.item_ids[other], score, SOURCE_ENTITY, catalog.entity_keys[entity], catalog.entity_names[entity]
            )
        else:
            neighbour = Neighbour(catalog.item_ids[other], score, SOURCE_CO_OCCURRENCE, SOURCE_CO_OCCURRENCE, title)
        neighbours.append(neighbour)
    return neighbours


_COPY_SQL = (
    "COPY graph_app_itemneighbour (item_id, neighbour_id, score, source, via, via_name, refreshed_at) FROM STDIN"
)


def _rows_replace(*, catalog: _Catalog, result: _Result, refreshed_at: datetime) -> None:
    progress = Progress("neighbourhoods: items' rows written", total=len(catalog.item_ids))
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM graph_app_itemneighbour")
        with connection.wrap_database_errors, cursor.copy(_COPY_SQL) as copy:
            for item, item_id in enumerate(catalog.item_ids):
                progress.advance()
                for neighbour in _item_neighbours(catalog, result, item):
                    copy.write_row(
                        (
                            item_id,
                            neighbour.item_id,
                            neighbour.score,
                            neighbour.source,
                            neighbour.via,
                            neighbour.via_name,
                            refreshed_at,
                        )
                    )
    progress.finish()


def neighbourhoods_publish(*, catalog: _Catalog, result: _Result) -> int:
    """Write every item's neighbourhood to Redis and delete the keys of items that no longer have one.

    The index set only ever grows before keys are written and shrinks after they are deleted, so an interrupted
    publish leaves at worst extra names in it, which the next publish removes. Returns the stale keys removed.
    """
    client = get_control_redis()
    previous = {member.decode() for member in client.smembers(redis_keys.ITEM_NEIGHBOURS_INDEX)}
    current = [item for item in range(len(catalog.item_ids)) if result.offsets[item + 1] > result.offsets[item]]
    progress = Progress("neighbourhoods: items published", total=len(current))
    for start in range(0, len(current), PUBLISH_BATCH_SIZE):
        batch = current[start : start + PUBLISH_BATCH_SIZE]
        progress.advance(len(batch))
        pipeline = client.pipeline(transaction=False)
        pipeline.sadd(redis_keys.ITEM_NEIGHBOURS_INDEX, *(catalog.item_ids[item] for item in batch))
        for item in batch:
            payload = neighbours_encode(title=catalog.titles[item], neighbours=_item_neighbours(catalog, result, item))
            pipeline.set(redis_keys.item_neighbours(catalog.item_ids[item]), payload)
        pipeline.execute()
    progress.finish()
    stale = sorted(previous - {catalog.item_ids[item] for item in current})
    for start in range(0, len(stale), PUBLISH_BATCH_SIZE):
        batch = stale[start : start + PUBLISH_BATCH_SIZE]
        pipeline = client.pipeline(transaction=False)
        for item_id in batch:
            pipeline.delete(redis_keys.item_neighbours(item_id))
        pipeline.srem(redis_keys.ITEM_NEIGHBOURS_INDEX, *batch)
        pipeline.execute()
    logger.info("graph.neighbourhoods_published", extra={"items": len(current), "stale_removed": len(stale)})
    return len(stale)


def neighbourhoods_refresh(
    *, k: int = NEIGHBOURS_PER_ITEM, window_days: int = CO_OCCURRENCE_WINDOW_DAYS, now: datetime | None = None
) -> NeighbourhoodsReport:
    """Recompute every item's neighbours from the catalog and the event log; idempotent."""
    started = time.monotonic()
    now = now or timezone.now()
    catalog = _catalog_load()
    item_users, users = _interactions_load(catalog=catalog, since=now - timedelta(days=window_days), now=now)
    result = neighbourhoods_compute(catalog=catalog, item_users=item_users, users=users, k=k)
    with transaction.atomic():
        _rows_replace(catalog=catalog, result=result, refreshed_at=now)
        transaction.on_commit(lambda: neighbourhoods_publish(catalog=catalog, result=result))
    entity_neighbours = int((result.via_entity >= 0).sum())
    report = NeighbourhoodsReport(
        items=len(catalog.item_ids),
        items_with_neighbours=int((np.diff(result.offsets) > 0).sum()),
        neighbours=len(result.neighbours),
        entity_neighbours=entity_neighbours,
        co_occurrence_neighbours=len(result.neighbours) - entity_neighbours,
        users=users,
        seconds=round(time.monotonic() - started, 3),
    )
    logger.info("graph.neighbourhoods_refreshed", extra=report.__dict__)
    return report
