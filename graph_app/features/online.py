"""The online materialization, read side: the feature matrix for one user and up to 500 candidate items in at
most two pipelined Redis round trips (the second only fetches the embeddings of the user's recent items).

Hot path: plain Python and numpy over Redis replies, no ORM. Every formula comes from `definitions`; the offline
materialization (`offline.py`) computes the same values from the PostgreSQL log.
"""

from __future__ import annotations

import itertools
import operator
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis
from django.conf import settings
from prometheus_client import Counter, Histogram

from graph_app.features.definitions import (
    AFFINITY_TTL_SECONDS,
    CTR_HALF_LIFE_SECONDS,
    DAY,
    FEATURE_INDEX,
    FEATURE_NAMES,
    FEATURES,
    POPULARITY_HALF_LIVES,
    RECENT_ITEMS_FOR_SIMILARITY,
    RETRIEVAL_COLUMNS,
    smoothed_ctr,
    trend,
)
from graph_app.features.user_affinity import UserAffinity, affinity_decode, recent_last_of
from graph_app.online import STATIC_DTYPE, catalog_changes_since, static_in_stock
from graph_app.state.reads import item_counters_queue, user_state_queue
from personalization import redis_keys
from personalization.cache import UserCacheWrite, user_cache_writes_queue
from personalization.process_caches import process_cache
from personalization.redis_client import get_redis

FEATURE_AGE_SECONDS = Histogram(
    "feature_age_seconds",
    "Age of the freshest online value read, per feature (time since its latest source event); observed on one feature "
    "read in FEATURE_AGE_SAMPLE_EVERY.",
    ["feature"],
    buckets=(1, 10, 60, 300, 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400, 90 * 86400),
)
FEATURE_MISSING = Counter(
    "feature_missing_total", "Online values treated as missing because they were older than their TTL.", ["feature"]
)
TTL = {feature.name: feature.ttl_seconds for feature in FEATURES}
# The features whose sources carry a timestamp online, by source. The catalog facts have none, nor do the
# placement click-through counters (decayed sums only).
ITEM_EVENT_FEATURES = (*(f"item_popularity_{window}" for window in POPULARITY_HALF_LIVES), "item_trend")
USER_CATEGORY_FEATURES = ("user_category_frequency", "user_category_recency_days")
USER_ENTITY_FEATURES = ("user_item_entity_affinity",)
USER_RECENT_FEATURES = ("user_item_similarity",)
_FEATURE_AGE = {
    name: FEATURE_AGE_SECONDS.labels(feature=name)
    for name in (*ITEM_EVENT_FEATURES, *USER_CATEGORY_FEATURES, *USER_ENTITY_FEATURES, *USER_RECENT_FEATURES)
}


_fetches = itertools.count()


def _ages_sampled() -> bool:
    """Whether this feature read observes the features' ages: one read in FEATURE_AGE_SAMPLE_EVERY per process. The
    histograms describe a distribution, which a sample shows as well; observing about ten of them on every request
    cost more than the rest of the metrics of a request (in gunicorn each observation writes a shared file)."""
    every = settings.FEATURE_AGE_SAMPLE_EVERY
    return every <= 1 or next(_fetches) % every == 0


def _age_observe(names: tuple[str, ...], age: float) -> None:
    for name in names:
        _FEATURE_AGE[name].observe(max(0.0, age))


COUNTER_WINDOWS = tuple(POPULARITY_HALF_LIVES)
# The packed records the ingest and impression scripts keep per item (graph_app/state/packed_add.lua):
# the popularity windows then the time of the latest event; clicks, impressions, then the latest time.
ITEM_COUNTERS = np.dtype([("values", "<f8", (len(COUNTER_WINDOWS),)), ("last", "<f8")])
PLACEMENT_COUNTERS = np.dtype([("values", "<f8", (2,)), ("last", "<f8")])


@dataclass(frozen=True)
class FeatureMatrix:
    item_ids: list[str]
    values: np.ndarray  # len(item_ids) x len(FEATURE_NAMES), NaN where missing
    names: tuple[str, ...] = FEATURE_NAMES
    recent_items: list[str] = field(default_factory=list)
    # The reads other consumers of the same request reuse (the bandit's context): the user's affinities, each row's
    # entity keys as read, and whether the user's recent items are within their TTL.
    affinity: UserAffinity = field(default_factory=UserAffinity)
    entities: list[bytes | None] = field(default_factory=list)
    recent_valid: bool = False

    def column(self, name: str) -> np.ndarray:
        return self.values[:, FEATURE_INDEX[name]]

    def rows(self, indexes: Sequence[int] | np.ndarray) -> FeatureMatrix:
        """The matrix of these rows only (in this order)."""
        chosen = [int(index) for index in indexes]
        return FeatureMatrix(
            [self.item_ids[index] for index in chosen], self.values[chosen], self.names, self.recent_items,
            self.affinity, [self.entities[index] for index in chosen] if self.entities else [], self.recent_valid,
        )  # fmt: skip


def _records(replies: list[Any], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Packed fixed-size records (or None, or a payload of another size: absent) as one structured array, and
    which rows were present. One join and one frombuffer, not a Python loop over the fields."""
    width = dtype.itemsize
    blank = bytes(width)
    chunks = [value if value.__class__ is bytes and len(value) == width else blank for value in replies]
    present = np.fromiter(map(operator.is_not, chunks, itertools.repeat(blank)), bool, len(chunks))
    return np.frombuffer(b"".join(chunks), dtype=dtype, count=len(chunks)), present


@dataclass(frozen=True)
class _CatalogRows:
    """The catalog facts of a request's items as columns (row i: item i): gathered from the arrays this process
    keeps (`_CatalogTable`), or decoded from the raw values read from Redis."""

    static: np.ndarray  # STATIC_DTYPE records
    known: np.ndarray  # whether the item's static facts were found
    entities: list[bytes | None]  # each item's entity keys as read: the Surface reuses them
    categories: np.ndarray  # the entity number of each item's category, or NO_ENTITY
    lengths: np.ndarray  # how many other entities each item has
    others: np.ndarray  # those entities' numbers, item after item
    # Embeddings of EMBEDDING_DIMENSIONS, in the table: its float32 rows and float64 norms, each item's row there
    # and its payload's size (0: none). None: only raw payloads (`vectors_raw`).
    table: _CatalogTable | None
    table_rows: np.ndarray | None
    vector_sizes: np.ndarray | None
    vectors_raw: Callable[[], list[Any]]

    def embeddings(self, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The rows whose embedding has `size` bytes, those embeddings as float64 and their norms."""
        table, table_rows, sizes = self.table, self.table_rows, self.vector_sizes
        if table is not None and table_rows is not None and sizes is not None and size == table.vector_bytes:
            rows = np.flatnonzero(sizes == size)
            chosen = table_rows[rows]
            return rows, table.vectors[chosen].astype(np.float64), table.norms[chosen]
        rows, matrix = _embedding_rows(self.vectors_raw(), size)
        matrix = matrix.astype(np.float64)
        return rows, matrix, np.linalg.norm(matrix, axis=1)


def _embedding_rows(payloads: Sequence[Any], size: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows whose embedding payload has `size` bytes, and those embeddings (float32, one a row)."""
    rows = [row for row, payload in enumerate(payloads) if payload and len(payload) == size]
    matrix = np.frombuffer(b"".join(payloads[row] for row in rows), dtype=np.float32)
    return np.array(rows, dtype=np.int64), matrix.reshape(len(rows), size // 4)


def _entity_columns(payloads: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From items' entity keys as read: each one's category number (or NO_ENTITY), how many other entities it has,
    and those entities' numbers, item after item. A payload is parsed once (`_parsed_entities`)."""
    parsed: list[Any] = list(map(_parsed_entities.get, payloads))
    if None in parsed:  # payloads seen for the first time
        parsed = [entry or _parse_entities(payload) for entry, payload in zip(parsed, payloads, strict=True)]
    rows = len(parsed)
    lengths = np.fromiter(map(_count_of, parsed), np.int64, rows)
    others = np.fromiter(itertools.chain.from_iterable(map(_others_of, parsed)), np.int64, int(lengths.sum()))
    return np.fromiter(map(_category_of, parsed), np.int64, rows), lengths, others


def _catalog_rows_decode(
    static_raw: Sequence[Any], vectors_raw: Sequence[Any], entities_raw: Sequence[Any]
) -> _CatalogRows:
    """Columns from raw Redis values (facts not kept in this process)."""
    static, known = _records(list(static_raw), STATIC_DTYPE)
    categories, lengths, others = _entity_columns(entities_raw)
    return _CatalogRows(
        static=static, known=known, entities=list(entities_raw), categories=categories, lengths=lengths,
        others=others, table=None, table_rows=None, vector_sizes=None, vectors_raw=lambda: list(vectors_raw),
    )  # fmt: skip


class _CatalogTable:
    """The catalog facts kept, as arrays with one row per item, so that a feature read gathers its 300 rows with
    numpy instead of decoding 300 raw values in Python. Rows are only ever appended: a reader holding row numbers
    keeps reading the facts it looked up, whatever is appended meanwhile. An item whose facts change gets a new row
    (its old one is left behind until the table is rebuilt: `dead`)."""

    def __init__(self, facts: dict[str, tuple[Any, Any, Any]] | None = None) -> None:
        self.row_of: dict[str, int] = {}
        self.size = 0
        self.dead = 0
        self.vector_bytes = settings.EMBEDDING_DIMENSIONS * 4
        self._allocate(max(1024, len(facts or ())))
        self.others = np.zeros(1024, dtype=np.int64)
        self.others_size = 0
        if facts:
            self.append(facts)

    def _allocate(self, capacity: int) -> None:
        old, size = self.__dict__, self.size
        self.static = _grown(old.get("static"), size, (capacity,), STATIC_DTYPE)
        self.known = _grown(old.get("known"), size, (capacity,), bool)
        self.categories = _grown(old.get("categories"), size, (capacity,), np.int64)
        self.starts = _grown(old.get("starts"), size, (capacity,), np.int64)
        self.lengths = _grown(old.get("lengths"), size, (capacity,), np.int64)
        self.vectors = _grown(old.get("vectors"), size, (capacity, self.vector_bytes // 4), np.float32)
        self.vector_sizes = _grown(old.get("vector_sizes"), size, (capacity,), np.int64)
        self.norms = _grown(old.get("norms"), size, (capacity,), np.float64)
        # The embeddings and entity keys as read.
        self.vector_payloads: list[Any] = old.get("vector_payloads", [])
        self.entity_payloads: list[Any] = old.get("entity_payloads", [])
        self.capacity = capacity

    def append(self, facts: dict[str, tuple[Any, Any, Any]]) -> None:
        """New rows for these items (the callers hold the facts' lock)."""
        count = len(facts)
        if not count:
            return
        if self.size + count > self.capacity:
            self._allocate(max(2 * self.capacity, self.size + count))
        ids = list(facts)
        statics, vectors, entities = zip(*facts.values(), strict=True)
        new = slice(self.size, self.size + count)
        self.static[new], self.known[new] = _records(list(statics), STATIC_DTYPE)
        categories, lengths, others = _entity_columns(entities)
        self.categories[new], self.lengths[new] = categories, lengths
        self.starts[new] = self.others_size + np.cumsum(lengths) - lengths
        total = len(others)
        if self.others_size + total > len(self.others):
            capacity = max(2 * len(self.others), self.others_size + total)
            self.others = _grown(self.others, self.others_size, (capacity,), np.int64)
        self.others[self.others_size : self.others_size + total] = others
        self.others_size += total
        self.vector_sizes[new] = [len(v) if v.__class__ is bytes else 0 for v in vectors]
        fitting, matrix = _embedding_rows(vectors, self.vector_bytes)
        self.vectors[self.size + fitting] = matrix
        self.norms[self.size + fitting] = np.linalg.norm(matrix.astype(np.float64), axis=1)
        self.vector_payloads.extend(vectors)
        self.entity_payloads.extend(entities)
        for offset, item_id in enumerate(ids):
            if item_id in self.row_of:
                self.dead += 1
            self.row_of[item_id] = self.size + offset
        self.size += count

    def forget(self, item_ids: set[str]) -> None:
        """These items' rows no longer answer (a new dict: a reader that looked rows up keeps its own)."""
        before = len(self.row_of)
        self.row_of = {item_id: row for item_id, row in self.row_of.items() if item_id not in item_ids}
        self.dead += before - len(self.row_of)

    def lookup(self, item_ids: list[str]) -> np.ndarray:
        """Each item's row, -1 where it has none."""
        return np.fromiter(map(self.row_of.get, item_ids, itertools.repeat(-1)), np.int64, len(item_ids))

    def gather(self, rows: np.ndarray) -> _CatalogRows:
        """The columns of these rows (all of this table's)."""
        lengths = self.lengths[rows]
        total = int(lengths.sum())
        # Each row's slice of `others`, end to end: its start repeated, plus the position within the row.
        ends = np.cumsum(lengths)
        flat = np.repeat(self.starts[rows] - (ends - lengths), lengths) + np.arange(total)
        chosen = rows.tolist()
        vectors, entities = self.vector_payloads, self.entity_payloads
        return _CatalogRows(
            static=self.static[rows], known=self.known[rows], entities=list(map(entities.__getitem__, chosen)),
            categories=self.categories[rows], lengths=lengths, others=self.others[flat],
            table=self, table_rows=rows, vector_sizes=self.vector_sizes[rows],
            vectors_raw=lambda: list(map(vectors.__getitem__, chosen)),
        )  # fmt: skip


def _grown(old: np.ndarray | None, used: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A zeroed array of `shape` holding the first `used` rows of `old`."""
    new = np.zeros(shape, dtype=dtype)
    if old is not None:
        new[:used] = old[:used]
    return new


# A table with more rows left behind than this (and than live ones) is rebuilt from the facts kept.
TABLE_DEAD_ROWS_REBUILD = 10_000


class _CatalogFacts:
    """The catalog facts (static, embedding, entity keys: raw Redis values) this process read, valid for one
    catalog version. Every write of the catalog copies bumps the version (`graph_app.online`), and every fetch
    reads it in the same round trip as the counters, so a fact is never older than the round trip that uses it."""

    def __init__(self) -> None:
        self.version: bytes | None = None
        self.facts: dict[str, tuple[Any, Any, Any]] = {}
        # The items of `facts` in stock: a stock check of hundreds of items is then one set intersection.
        self.in_stock: set[str] = set()
        # The same facts as arrays (`_CatalogTable`), for feature reads.
        self.table = _CatalogTable()
        self.lock = threading.Lock()

    def follow(self, version: bytes | None, changes: list[bytes]) -> None:
        """Move the facts kept to `version`: drop those of the items changed since (`changes`: the catalog's
        change list, `graph_app.online.catalog_changes_since`), or all when that cannot be told."""
        with self.lock:
            if version == self.version:
                return
            changed = (
                catalog_changes_since(changes, self.version, version) if self.version and version is not None else None
            )
            # New objects, not changed ones: a reader holding the old ones still sees one version. The facts are
            # replaced before the version moves, so that no reader takes the old facts for the new version.
            if changed is None:
                self.facts, self.in_stock, self.table = {}, set(), _CatalogTable()
            elif changed:
                self.facts = {item_id: fact for item_id, fact in self.facts.items() if item_id not in changed}
                self.in_stock = self.in_stock.difference(changed)
                self.table.forget(changed)
            self.version = version

    def keep(self, version: bytes | None, facts: dict[str, tuple[Any, Any, Any]]) -> None:
        limit = settings.FEATURE_CATALOG_CACHE_ITEMS
        with self.lock:
            if version != self.version:
                return  # read under an older version: not kept
            if len(self.facts) + len(facts) > limit:
                # Full: the older half goes (insertion order), not everything, so that a catalog larger than the
                # limit keeps serving most reads from memory instead of starting over.
                items = list(self.facts.items())
                self.facts = dict(items[len(items) // 2 + len(facts) :])
                self.in_stock = self.in_stock.intersection(self.facts)
                self.table = _CatalogTable(self.facts)
            elif self.table.dead > max(TABLE_DEAD_ROWS_REBUILD, len(self.table.row_of)):
                self.table = _CatalogTable(self.facts)
            self.facts.update(facts)
            self.table.append(facts)
            for item_id, (static, _, _) in facts.items():
                if static.__class__ is bytes and static_in_stock(static):
                    self.in_stock.add(item_id)
                else:
                    self.in_stock.discard(item_id)


_catalog_facts = _CatalogFacts()


def catalog_stock_kept(version: bytes | None) -> tuple[dict[str, tuple[Any, Any, Any]], set[str]]:
    """Item id -> (static facts, embedding, entity keys) this process keeps, and which of those items are in stock,
    taken together, when it keeps them for this catalog version (read by the caller in its own round trip); else
    empty (the next feature read follows the version)."""
    if settings.FEATURE_CATALOG_CACHE_ITEMS <= 0:
        return {}, set()
    with _catalog_facts.lock:
        if version != _catalog_facts.version:
            return {}, set()
        return _catalog_facts.facts, _catalog_facts.in_stock


PRELOAD_SCAN_COUNT = 5000


def catalog_facts_preload() -> int:
    """Read the catalog facts of every item into this process before its first request (a serving process's
    warm-up), so that neither stock checks nor feature reads wait on them while it is new; returns how many. A
    catalog larger than FEATURE_CATALOG_CACHE_ITEMS gets half that many (the first scanned), leaving room for what
    requests read."""
    limit = settings.FEATURE_CATALOG_CACHE_ITEMS
    if limit <= 0:
        return 0
    client = get_redis()
    version: bytes | None = client.get(redis_keys.CATALOG_VERSION)  # type: ignore[assignment]
    if version is None:
        return 0
    wanted = limit if int(client.hlen(redis_keys.CATALOG_STATIC)) <= limit else limit // 2
    statics: dict[bytes, bytes] = {}
    for item_id, static in client.hscan_iter(redis_keys.CATALOG_STATIC, count=PRELOAD_SCAN_COUNT):
        statics[item_id] = static
        if len(statics) >= wanted:
            break
    facts: dict[str, tuple[Any, Any, Any]] = {}
    ids = list(statics)
    entities_key = redis_keys.catalog_entities(0)  # every partition keeps the same copy
    for start in range(0, len(ids), PRELOAD_SCAN_COUNT):
        chunk = ids[start : start + PRELOAD_SCAN_COUNT]
        pipeline = client.pipeline(transaction=False)
        pipeline.hmget(redis_keys.CATALOG_VECTORS, chunk)
        pipeline.hmget(entities_key, chunk)
        vectors, entities = pipeline.execute()
        facts.update(
            (item_id.decode(), (statics[item_id], vector, entity))
            for item_id, vector, entity in zip(chunk, vectors, entities, strict=True)
        )
    _catalog_facts.follow(version, [])
    _catalog_facts.keep(version, facts)  # a catalog change meanwhile moved the version: then nothing is kept
    return len(facts) if _catalog_facts.version == version else 0


@process_cache("graph.catalog_facts")
def catalog_facts_forget() -> None:
    """Drop the catalog facts this process keeps (tests)."""
    with _catalog_facts.lock:
        _catalog_facts.version, _catalog_facts.facts, _catalog_facts.in_stock = b"", {}, set()
        _catalog_facts.table = _CatalogTable()


def _queue_catalog(pipeline: redis.client.Pipeline, user_key: str, item_ids: list[str]) -> None:
    pipeline.hmget(redis_keys.CATALOG_STATIC, item_ids)
    pipeline.hmget(redis_keys.CATALOG_VECTORS, item_ids)
    pipeline.hmget(redis_keys.catalog_entities(redis_keys.partition_of(user_key)), item_ids)


def catalog_facts_read(*, user_key: str, item_ids: list[str], version: bytes | None) -> dict[str, tuple[Any, Any, Any]]:
    """Item id -> (static facts, embedding, entity keys) of these items, in one round trip; kept by this process
    when `version` (the catalog version the caller read before, in its own round trip) is the one it keeps, so that
    items retrieval checks without ranking them (the similar lists' and graph neighbours' stock) are read once."""
    facts = _catalog_read(user_key, item_ids)
    if settings.FEATURE_CATALOG_CACHE_ITEMS > 0:
        _catalog_facts.keep(version, facts)
    return facts


def _catalog_read(user_key: str, item_ids: list[str]) -> dict[str, tuple[Any, Any, Any]]:
    pipeline = get_redis().pipeline(transaction=False)
    _queue_catalog(pipeline, user_key, item_ids)
    return dict(zip(item_ids, zip(*pipeline.execute(), strict=True), strict=True))


def features_fetch(
    *,
    user_key: str,
    item_ids: list[str],
    placement: str,
    now: float,
    recent_items: Sequence[str] | None = None,
    writes: list[UserCacheWrite] | None = None,
    retrieval: np.ndarray | None = None,
) -> FeatureMatrix:
    """The feature matrix of the items for the user, in one round trip: the user's state, the catalog facts of
    the items this process does not keep (see `_CatalogFacts`), every item's counters. `recent_items`: the
    user's recent items as the caller read them moments ago; their embeddings then ride in the same round trip,
    and are used if the list still holds them (else a second round trip reads the embeddings of the list as it
    is now). `writes`: the caller's user cache values to store, in the same round trip. `retrieval`: the items'
    retrieval features as the candidate set carries them (rows in `item_ids` order)."""
    client = get_redis()
    pipeline = client.pipeline(transaction=False)
    caching = settings.FEATURE_CATALOG_CACHE_ITEMS > 0
    # The items' rows in the facts kept (the version they were kept for, and the table, taken together).
    with _catalog_facts.lock:
        kept_version, kept, table = _catalog_facts.version, _catalog_facts.facts, _catalog_facts.table
        rows = table.lookup(item_ids) if caching else np.full(len(item_ids), -1)
    unknown = np.flatnonzero(rows < 0)
    missing = [item_ids[row] for row in unknown.tolist()] if len(unknown) else []
    pipeline.get(redis_keys.CATALOG_VERSION)
    user_read = user_state_queue(pipeline, user_key=user_key, recent_depth=RECENT_ITEMS_FOR_SIMILARITY)
    if missing:
        _queue_catalog(pipeline, user_key, missing)
    counters_read = item_counters_queue(pipeline, item_ids=item_ids, placement=placement)
    expected = list(recent_items[:RECENT_ITEMS_FOR_SIMILARITY]) if recent_items else []
    if expected:
        pipeline.hmget(redis_keys.CATALOG_VECTORS, expected)
    written = user_cache_writes_queue(pipeline, writes) if writes else 0
    replies = pipeline.execute()
    del replies[len(replies) - written :]
    early_vectors = replies.pop() if expected else None
    version = replies[0]
    user = user_read(replies)
    affinity_raw, recent_raw, legacy_recent_last = user.affinity, user.recent, user.legacy_recent_last
    # The latest item of interest's time: "#r" of the hash, or its own key in the layout before (until the user's
    # next event moves it).
    recent_last = recent_last_of(affinity_raw)
    if recent_last is None and legacy_recent_last is not None:
        recent_last = float(legacy_recent_last)
    columns: list[Sequence[Any]] = replies[4:7] if missing else [[], [], []]
    per_partition = counters_read(replies)
    if not caching:
        catalog = _catalog_rows_decode(*columns)
    elif not missing and version == kept_version:
        catalog = table.gather(rows)  # every fact kept, for the version just read: the usual case
    else:
        read = dict(zip(missing, zip(*columns, strict=True), strict=True))
        catalog = _catalog_kept_and_read(client, user_key, item_ids, version, read, kept)
    recent_vectors = _recent_vectors(client, recent_raw, recent_last, now, expected, early_vectors)
    matrix = features_compute(
        replies=[affinity_raw, recent_raw, recent_last, *per_partition], catalog=catalog,
        recent_vectors=recent_vectors, item_ids=item_ids, now=now, observe=True, ages=_ages_sampled(),
    )  # fmt: skip
    if retrieval is not None and len(retrieval) == len(item_ids):
        matrix.values[:, RETRIEVAL_COLUMNS] = retrieval
    return matrix


def _catalog_kept_and_read(
    client: Any,
    user_key: str,
    item_ids: list[str],
    version: bytes | None,
    read: dict[str, tuple[Any, Any, Any]],
    kept: dict[str, tuple[Any, Any, Any]],
) -> _CatalogRows:
    """The items' catalog rows when some were not kept, or kept for another catalog version: keep what the
    request `read` (after dropping the facts of the items the catalog changed since, and reading the request's own
    again), then take every row from the facts kept, or in the items' order when they cannot all be kept."""
    if version != _catalog_facts.version:
        # The catalog changed since the facts kept were read: drop those of the items it changed (one more round
        # trip for the change list), and read the request's own again (one more).
        changes: list[bytes] = client.lrange(redis_keys.CATALOG_CHANGES, 0, -1)
        _catalog_facts.follow(version, changes)
        kept = _catalog_facts.facts
        stale = [item_id for item_id in dict.fromkeys(item_ids) if item_id not in kept and item_id not in read]
        if stale:
            read.update(_catalog_read(user_key, stale))
    _catalog_facts.keep(version, read)
    with _catalog_facts.lock:
        table = _catalog_facts.table
        rows = table.lookup(item_ids) if _catalog_facts.version == version else np.full(len(item_ids), -1)
    if len(rows) and rows.min() >= 0:
        return table.gather(rows)
    # Not all kept (read under an older version, or past the limit): the columns in the items' order.
    columns: list[Sequence[Any]] = (
        list(zip(*(read.get(i) or kept[i] for i in item_ids), strict=True)) if item_ids else [[], [], []]
    )
    return _catalog_rows_decode(*columns)


def _recent_vectors(
    client: Any,
    recent_raw: list[bytes],
    recent_last: float | None,
    now: float,
    expected: list[str],
    early_vectors: list[Any] | None,
) -> list[Any]:
    """The embeddings of the user's recent items (none once older than their TTL): those read in the round trip
    when the list still holds what the caller expected, else read now."""
    recent = [value.decode() for value in recent_raw]
    if recent_last is None or float(recent_last) + AFFINITY_TTL_SECONDS <= now:
        return []  # the user's recent items are older than their TTL: missing
    if not recent:
        return []
    if recent == expected and early_vectors is not None:
        return early_vectors
    vectors: list[Any] = client.hmget(redis_keys.CATALOG_VECTORS, recent)
    return vectors


def _decayed_sums(
    replies: list[Any], dtype: np.dtype, half_lives: np.ndarray, now: float, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per item, the packed counters of every partition decayed to `now` and summed (count x windows), and the
    time of the item's latest event in any partition (-inf when none)."""
    totals = np.zeros((count, len(half_lives)))
    last_seen = np.full(count, -np.inf)
    for reply in replies:
        records, present = _records(reply, dtype)
        if not present.any():
            continue
        last = records["last"]
        factors = 2.0 ** (-(now - last)[:, None] / half_lives[None, :])
        totals += np.where(present[:, None], records["values"] * factors, 0.0)
        last_seen = np.where(present, np.fmax(last_seen, last), last_seen)
    return totals, last_seen


_POPULARITY_HALF_LIVES = np.array([POPULARITY_HALF_LIVES[window] for window in COUNTER_WINDOWS])
_CTR_HALF_LIVES = np.array([CTR_HALF_LIFE_SECONDS, CTR_HALF_LIFE_SECONDS])


def features_compute(
    *,
    replies: list[Any],
    catalog: _CatalogRows,
    recent_vectors: list[Any],
    item_ids: list[str],
    now: float,
    observe: bool = False,
    ages: bool = False,
) -> FeatureMatrix:
    """`replies`: the user's affinity hash (as read), recent items and their time, then the counters of every partition;
    `catalog`: the items' catalog facts. `observe`: count the values treated as missing (FEATURE_MISSING); `ages`:
    observe the features' ages (FEATURE_AGE_SECONDS)."""
    count = len(item_ids)
    values = np.full((count, len(FEATURE_NAMES)), np.nan)
    affinity_raw, recent_raw, recent_last = replies[:3]
    affinity = affinity_decode(affinity_raw)
    per_partition = replies[3:]
    popularity, last_seen = _decayed_sums(per_partition[0::2], ITEM_COUNTERS, _POPULARITY_HALF_LIVES, now, count)
    placement_totals, _ = _decayed_sums(per_partition[1::2], PLACEMENT_COUNTERS, _CTR_HALF_LIVES, now, count)

    # Item popularity: zero when the item never had an event, missing when its latest is older than the TTL.
    seen = np.isfinite(last_seen)
    age = now - last_seen
    for index, window in enumerate(COUNTER_WINDOWS):
        name = f"item_popularity_{window}"
        column = np.where(seen, popularity[:, index], 0.0)
        ttl = TTL[name]
        stale = seen & (age > ttl) if ttl else np.zeros(count, dtype=bool)
        column[stale] = np.nan
        values[:, FEATURE_INDEX[name]] = column
        if observe and stale.any():
            FEATURE_MISSING.labels(feature=name).inc(int(stale.sum()))
    # The definitions' formulas are plain arithmetic: applied to whole columns they give the same numbers.
    values[:, FEATURE_INDEX["item_trend"]] = trend(
        values[:, FEATURE_INDEX["item_popularity_1h"]], values[:, FEATURE_INDEX["item_popularity_1d"]]
    )
    values[:, FEATURE_INDEX["item_placement_ctr"]] = smoothed_ctr(placement_totals[:, 0], placement_totals[:, 1])
    if ages and seen.any():
        _age_observe(ITEM_EVENT_FEATURES, float(np.min(age[seen])))

    static, known = catalog.static, catalog.known
    values[known, FEATURE_INDEX["item_price"]] = static["price"][known]
    values[known, FEATURE_INDEX["item_in_stock"]] = (static["in_stock"][known] != 0).astype(np.float64)
    values[known, FEATURE_INDEX["item_age_days"]] = (now - static["created_at"][known]) / DAY

    _user_entity_features(values, affinity, catalog, now, ages)
    _similarity(values, catalog, recent_vectors)
    if ages and recent_vectors and recent_last is not None:
        _age_observe(USER_RECENT_FEATURES, now - float(recent_last))
    return FeatureMatrix(
        item_ids=list(item_ids), values=values, recent_items=[value.decode() for value in recent_raw],
        affinity=affinity, entities=catalog.entities,
        recent_valid=bool(recent_raw) and recent_last is not None and float(recent_last) + AFFINITY_TTL_SECONDS > now,
    )  # fmt: skip


# Entity keys ("category:mugs", "brand:acme") numbered in this process, and items' entity lists by their encoded
# form (items keep their entities for long), parsed once: (index of the category or NO_ENTITY, indexes of the
# other entities, how many). A request then reads the user's counters into arrays over these numbers and computes
# every row with numpy, gathering the parsed lists in C (map, itemgetter) rather than in Python loops.
_entity_numbers: dict[bytes, int] = {}
PARSED_ENTITIES_KEPT = 200_000
NO_ENTITY = -1
_NO_ENTITIES: tuple[int, tuple[int, ...], int] = (NO_ENTITY, (), 0)
# No payload (None) or an empty one: no entities; always there, so that a lookup misses only what needs parsing.
_ALWAYS_PARSED: dict[bytes | None, tuple[int, tuple[int, ...], int]] = {None: _NO_ENTITIES, b"": _NO_ENTITIES}
_parsed_entities: dict[bytes | None, tuple[int, tuple[int, ...], int]] = dict(_ALWAYS_PARSED)
_category_of = operator.itemgetter(0)
_others_of = operator.itemgetter(1)
_count_of = operator.itemgetter(2)


@process_cache("graph.entity_numbers")
def _entity_numbers_forget() -> None:
    # The kept catalog table holds these numbers: it goes with them.
    _entity_numbers.clear()
    _parsed_entities.clear()
    _parsed_entities.update(_ALWAYS_PARSED)
    catalog_facts_forget()


def _entity_number(key: bytes) -> int:
    number = _entity_numbers.get(key)
    if number is None:
        number = _entity_numbers[key] = len(_entity_numbers)
    return number


def _parse_entities(payload: bytes) -> tuple[int, tuple[int, ...], int]:
    keys = payload.split(b"|")
    category = next((key for key in keys if key.startswith(b"category:")), None)
    others = tuple(_entity_number(key) for key in keys if key and not key.startswith(b"category:"))
    parsed = (_entity_number(category) if category else NO_ENTITY, others, len(others))
    if len(_parsed_entities) >= PARSED_ENTITIES_KEPT:
        _parsed_entities.clear()  # the numbering stays: it only grows with the catalog's entities
        _parsed_entities.update(_ALWAYS_PARSED)
    _parsed_entities[payload] = parsed
    return parsed


def _user_entity_features(
    values: np.ndarray, affinity: UserAffinity, catalog: _CatalogRows, now: float, observe: bool
) -> None:
    if not affinity.valid(now):
        return  # a new user, or one whose state is older than its TTL: missing
    factor = affinity.factor(now)
    if observe:
        if affinity.category_times:
            _age_observe(USER_CATEGORY_FEATURES, now - max(affinity.category_times.values()))
        # The other entities' freshest value is the latest event that updated the hash (when it holds any).
        if affinity.last is not None and len(affinity.counters) > len(affinity.category_times):
            _age_observe(USER_ENTITY_FEATURES, now - affinity.last)
    frequency, recency, entity_affinity = (FEATURE_INDEX[name] for name in (
        "user_category_frequency", "user_category_recency_days", "user_item_entity_affinity"
    ))  # fmt: skip
    # The user's counters over the entity numbers (the last slot stands for "no category": 0 and never).
    size = len(_entity_numbers) + 1
    counts, latest = np.zeros(size), np.full(size, np.nan)
    numbers = _entity_numbers
    for name, value in affinity.counters.items():
        number = numbers.get(name)
        if number is not None:  # else an entity of none of the items read so far: no row needs it
            counts[number] = value
    for name, seen in affinity.category_times.items():
        number = numbers.get(name)
        if number is not None:
            latest[number] = seen
    rows = len(catalog.categories)
    categories = catalog.categories
    values[:, frequency] = counts[categories] * factor
    values[:, recency] = (now - latest[categories]) / DAY
    lengths = catalog.lengths
    sums: np.ndarray = np.zeros(rows)
    if len(catalog.others):
        # Summed per row in the items' own order, as one would by hand.
        sums = np.bincount(np.repeat(np.arange(rows), lengths), weights=counts[catalog.others], minlength=rows)
    values[:, entity_affinity] = sums * factor


def _similarity(values: np.ndarray, catalog: _CatalogRows, recent_vectors: list[Any]) -> None:
    # Embeddings of another size than the newest recent item's (an older model's, mid-retraining) are missing.
    size = next((len(payload) for payload in recent_vectors if payload), 0)
    recent = [
        np.frombuffer(payload, dtype=np.float32) for payload in recent_vectors if payload and len(payload) == size
    ]
    if not recent:
        return
    taste = np.mean(recent, axis=0).astype(np.float64)
    norm = float(np.linalg.norm(taste))
    if norm == 0:
        return
    taste /= norm
    rows, matrix, norms = catalog.embeddings(size)
    if not len(rows):
        return
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = (matrix @ taste) / norms
    values[rows, FEATURE_INDEX["user_item_similarity"]] = np.where(norms > 0, cosine, np.nan)
