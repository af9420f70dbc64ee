"""The online materialization, read side: the feature matrix for one user and up to 500 candidate items in at
most two pipelined Redis round trips (the second only fetches the embeddings of the user's recent items).

Hot path: plain Python and numpy over Redis replies, no ORM. Every formula comes from `definitions`; the offline
materialization (`offline.py`) computes the same values from the PostgreSQL log.
"""

from __future__ import annotations

import itertools
import math
import operator
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis
from django.conf import settings
from prometheus_client import Counter, Histogram

from graph_app.features.definitions import (
    AFFINITY_HALF_LIFE_SECONDS,
    AFFINITY_TTL_SECONDS,
    CTR_HALF_LIFE_SECONDS,
    DAY,
    FEATURE_INDEX,
    FEATURE_NAMES,
    FEATURES,
    POPULARITY_HALF_LIVES,
    RECENT_ITEMS_FOR_SIMILARITY,
    smoothed_ctr,
    trend,
)
from graph_app.online import STATIC_DTYPE
from personalization import redis_keys
from personalization.redis_client import get_redis

FEATURE_AGE_SECONDS = Histogram(
    "feature_age_seconds",
    "Age of the freshest online value read, per feature (time since its latest source event).",
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


def _age_observe(names: tuple[str, ...], age: float) -> None:
    for name in names:
        _FEATURE_AGE[name].observe(max(0.0, age))


COUNTER_WINDOWS = tuple(POPULARITY_HALF_LIVES)
# The packed records the ingest and impression scripts keep per item (signals_app.online_state.PACKED_ADD_LUA):
# the popularity windows then the time of the latest event; clicks, impressions, then the latest time.
ITEM_COUNTERS = np.dtype([("values", "<f8", (len(COUNTER_WINDOWS),)), ("last", "<f8")])
PLACEMENT_COUNTERS = np.dtype([("values", "<f8", (2,)), ("last", "<f8")])


@dataclass(frozen=True)
class FeatureMatrix:
    item_ids: list[str]
    values: np.ndarray  # len(item_ids) x len(FEATURE_NAMES), NaN where missing
    names: tuple[str, ...] = FEATURE_NAMES
    recent_items: list[str] = field(default_factory=list)
    # The raw reads other consumers of the same request reuse (the bandit's context): the user's affinity hash,
    # each row's entity keys, and whether the user's recent items are within their TTL.
    affinity: dict[bytes, bytes] = field(default_factory=dict)
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


# Entity keys ("category:mugs", "brand:acme") numbered in this process (the numbering only grows with the
# catalog's entities). The kept catalog facts store each item's category and other entities as these numbers, so
# a request reads the user's counters into arrays over them and computes every row with numpy.
_entity_numbers: dict[bytes, int] = {}
NO_ENTITY = -1  # also pads rows of fewer entities: it indexes the counters' last slot, which stays 0 and never


def _entity_number(key: bytes) -> int:
    number = _entity_numbers.get(key)
    if number is None:
        number = _entity_numbers[key] = len(_entity_numbers)
    return number


def _parse_entities(payload: bytes | None) -> tuple[int, list[int]]:
    """(the category's number or NO_ENTITY, the other entities' numbers in the payload's order)."""
    if not payload:
        return NO_ENTITY, []
    keys = payload.split(b"|")
    category = next((key for key in keys if key.startswith(b"category:")), None)
    others = [_entity_number(key) for key in keys if key and not key.startswith(b"category:")]
    return (_entity_number(category) if category else NO_ENTITY), others


@dataclass(frozen=True)
class _Rows:
    """Catalog facts of some items as numpy columns (rows in the items' order)."""

    static: np.ndarray  # STATIC_DTYPE records
    static_known: np.ndarray
    vectors: np.ndarray  # float32, rows x dimensions (0 columns when no item has one)
    vector_norms: np.ndarray  # of each vector in float64, computed once
    vector_known: np.ndarray
    category: np.ndarray  # entity number or NO_ENTITY
    others: np.ndarray  # rows x width entity numbers, padded with NO_ENTITY
    entities: list[bytes | None]  # the raw entity keys (what the bandit and the Surface read)

    @classmethod
    def from_replies(cls, static_raw: Sequence[Any], vectors_raw: Sequence[Any], entities_raw: Sequence[Any]) -> _Rows:
        """Rows from the three HMGET replies of `_queue_catalog`."""
        count = len(static_raw)
        static, static_known = _records(list(static_raw), STATIC_DTYPE)
        sizes = {len(value) for value in vectors_raw if value.__class__ is bytes and value}
        width = max(sizes, default=0)
        # A vector of another size than the others (an older model's) is treated as missing.
        vector_known = np.fromiter(
            (value.__class__ is bytes and len(value) == width > 0 for value in vectors_raw), bool, count
        )
        blank = bytes(width)
        vectors = np.frombuffer(
            b"".join(value if known else blank for value, known in zip(vectors_raw, vector_known, strict=True)),
            dtype=np.float32,
        ).reshape(count, width // 4)
        parsed = [_parse_entities(value if value.__class__ is bytes else None) for value in entities_raw]
        others = np.full((count, max((len(row) for _, row in parsed), default=0)), NO_ENTITY, dtype=np.int64)
        for row, (_, numbers) in enumerate(parsed):
            others[row, : len(numbers)] = numbers
        return cls(
            static=np.array(static), static_known=static_known, vectors=vectors.copy(),
            vector_norms=np.linalg.norm(vectors.astype(np.float64), axis=1), vector_known=vector_known,
            category=np.fromiter((category for category, _ in parsed), np.int64, count), others=others,
            entities=[value if value.__class__ is bytes else None for value in entities_raw],
        )  # fmt: skip

    def take(self, rows: np.ndarray) -> _Rows:
        return _Rows(
            self.static[rows], self.static_known[rows], self.vectors[rows], self.vector_norms[rows],
            self.vector_known[rows], self.category[rows], self.others[rows], [self.entities[row] for row in rows],
        )  # fmt: skip


def _rows_concat(parts: Sequence[_Rows]) -> _Rows:
    """One block of rows from several (vectors and entity lists of different widths are padded)."""
    dimensions = max(part.vectors.shape[1] for part in parts)
    width = max(part.others.shape[1] for part in parts)

    def padded(array: np.ndarray, columns: int, fill: float | int) -> np.ndarray:
        if array.shape[1] == columns:
            return array
        wider = np.full((len(array), columns), fill, dtype=array.dtype)
        wider[:, : array.shape[1]] = array
        return wider

    vectors, known = [], []
    for part in parts:
        # Vectors of another size than the widest are missing (an older model's).
        known.append(part.vector_known & (part.vectors.shape[1] == dimensions))
        vectors.append(padded(part.vectors, dimensions, 0.0))
    return _Rows(
        static=np.concatenate([part.static for part in parts]),
        static_known=np.concatenate([part.static_known for part in parts]),
        vectors=np.concatenate(vectors),
        vector_norms=np.concatenate([part.vector_norms for part in parts]),
        vector_known=np.concatenate(known),
        category=np.concatenate([part.category for part in parts]),
        others=np.concatenate([padded(part.others, width, NO_ENTITY) for part in parts]),
        entities=[entity for part in parts for entity in part.entities],
    )


class _CatalogFacts:
    """The catalog facts (static, embedding, entities) this process read, as numpy columns, valid for one catalog
    version. Every write of the catalog copies bumps the version (`graph_app.online`), and every fetch reads it
    in the same round trip as the counters, so a fact is never older than the round trip that uses it. A request
    gathers its rows with numpy instead of decoding hundreds of Redis values."""

    def __init__(self) -> None:
        self.version: bytes | None = None
        self.index: dict[str, int] = {}  # item id -> row
        self.blocks: list[_Rows] = []  # appended since the last merge into `rows`
        self.rows: _Rows | None = None
        # Whether each item kept is in stock (retrieval checks hundreds a request).
        self.stock: dict[str, bool] = {}
        self.lock = threading.Lock()

    def observe(self, version: bytes | None) -> bool:
        """Note the version read; True when the facts kept are of it (else they are dropped)."""
        with self.lock:
            if version == self.version:
                return True
            self.version = version
            self._reset()
            return False

    def _reset(self) -> None:
        # New objects, not cleared ones: a reader holding the old ones still sees one version.
        self.index, self.blocks, self.rows, self.stock = {}, [], None, {}

    def _merged(self) -> _Rows | None:
        if self.blocks:
            self.rows = _rows_concat([self.rows, *self.blocks] if self.rows is not None else self.blocks)
            self.blocks = []
        return self.rows

    def keep_and_take(
        self, version: bytes | None, item_ids: list[str], read: dict[str, int], block: _Rows
    ) -> _Rows | None:
        """Keep `block` (the facts just read: item id -> its row in it) when read under the kept version, and the
        rows of `item_ids` from what is kept; without keeping (another version, or caching off), from `block`
        and the facts kept (None when those changed version meanwhile: read everything again)."""
        limit = settings.FEATURE_CATALOG_CACHE_ITEMS
        if not item_ids:
            return block
        with self.lock:
            if version == self.version and limit > 0:
                if len(self.index) + len(read) > limit:
                    # Full: the older half goes, not everything, so that a catalog larger than the limit keeps
                    # serving most reads from memory instead of starting over.
                    merged = self._merged()
                    kept = sorted(self.index.items(), key=lambda pair: pair[1])[len(self.index) // 2 + len(read) :]
                    rows = np.array([row for _, row in kept], dtype=np.int64)
                    stock = self.stock
                    self._reset()
                    if merged is not None and len(rows):
                        self.rows = merged.take(rows)
                        self.index = {item_id: number for number, (item_id, _) in enumerate(kept)}
                        self.stock = {item_id: stock[item_id] for item_id, _ in kept}
                if read:
                    offset = len(self.index) + 0
                    order = sorted(read.items(), key=lambda pair: pair[1])
                    self.blocks.append(block.take(np.array([row for _, row in order], dtype=np.int64)))
                    in_stock = block.static_known & (block.static["in_stock"] != 0)
                    for number, (item_id, row) in enumerate(order):
                        self.index[item_id] = offset + number
                        self.stock[item_id] = bool(in_stock[row])
                try:
                    rows = np.fromiter(map(self.index.__getitem__, item_ids), np.int64, len(item_ids))
                except KeyError:
                    pass  # not every item is kept (a limit of fewer items than the request's)
                else:
                    merged = self._merged()
                    assert merged is not None
                    return merged.take(rows)
        # Not kept: each row from the block read, else from the facts kept (all of one version: the caller read
        # everything again when the version changed).
        return self._take_unkept(item_ids, read, block)

    def _take_unkept(self, item_ids: list[str], read: dict[str, int], block: _Rows) -> _Rows | None:
        """None: some item is neither read nor kept (the kept facts changed version meanwhile)."""
        with self.lock:
            merged, index = self._merged(), self.index
        from_block = [row for row in map(read.get, item_ids) if row is not None]
        if len(from_block) == len(item_ids):
            return block.take(np.array(from_block, dtype=np.int64))
        if merged is None or any(item_id not in index for item_id in item_ids if item_id not in read):
            return None
        parts = [block.take(np.array(from_block, dtype=np.int64)), merged.take(
            np.array([index[item_id] for item_id in item_ids if item_id not in read], dtype=np.int64)
        )]  # fmt: skip
        combined = _rows_concat(parts)
        # Back in the items' order.
        position = {item_id: number for number, item_id in enumerate(
            [item_id for item_id in item_ids if item_id in read] + [i for i in item_ids if i not in read]
        )}  # fmt: skip
        return combined.take(np.array([position[item_id] for item_id in item_ids], dtype=np.int64))


_catalog_facts = _CatalogFacts()


def catalog_stock_kept(version: bytes | None) -> dict[str, bool]:
    """Item id -> in stock, for the items whose facts this process keeps for this catalog version (read by the
    caller in its own round trip); empty when caching is off or the version is new."""
    if settings.FEATURE_CATALOG_CACHE_ITEMS <= 0 or not _catalog_facts.observe(version):
        return {}
    return _catalog_facts.stock


def catalog_facts_forget() -> None:
    """Drop the catalog facts this process keeps (tests)."""
    with _catalog_facts.lock:
        _catalog_facts.version = b""
        _catalog_facts._reset()


def _queue_catalog(pipeline: redis.client.Pipeline, user_key: str, item_ids: list[str]) -> None:
    pipeline.hmget(redis_keys.CATALOG_STATIC, item_ids)
    pipeline.hmget(redis_keys.CATALOG_VECTORS, item_ids)
    pipeline.hmget(redis_keys.catalog_entities(redis_keys.partition_of(user_key)), item_ids)


def features_fetch(
    *, user_key: str, item_ids: list[str], placement: str, now: float, recent_items: Sequence[str] | None = None
) -> FeatureMatrix:
    """The feature matrix of the items for the user, in one round trip: the user's state, the catalog facts of
    the items this process does not keep (see `_CatalogFacts`), every item's counters. `recent_items`: the
    user's recent items as the caller read them moments ago; their embeddings then ride in the same round trip,
    and are used if the list still holds them (else a second round trip reads the embeddings of the list as it
    is now)."""
    client = get_redis()
    pipeline = client.pipeline(transaction=False)
    caching = settings.FEATURE_CATALOG_CACHE_ITEMS > 0
    kept = _catalog_facts.index if caching else {}
    missing = list(dict.fromkeys(item_id for item_id in item_ids if item_id not in kept))
    pipeline.get(redis_keys.CATALOG_VERSION)
    pipeline.hgetall(redis_keys.user_affinity(user_key))
    pipeline.lrange(redis_keys.user_recent_items(user_key), 0, RECENT_ITEMS_FOR_SIMILARITY - 1)
    pipeline.get(redis_keys.user_recent_last(user_key))
    if missing:
        _queue_catalog(pipeline, user_key, missing)
    for partition in redis_keys.partitions():
        pipeline.hmget(redis_keys.item_counters(partition), item_ids)
        pipeline.hmget(redis_keys.placement_counters(partition, placement), item_ids)
    expected = list(recent_items[:RECENT_ITEMS_FOR_SIMILARITY]) if recent_items else []
    if expected:
        pipeline.hmget(redis_keys.CATALOG_VECTORS, expected)
    replies = pipeline.execute()
    early_vectors = replies.pop() if expected else None
    version, affinity_raw, recent_raw, recent_last = replies[:4]
    columns: list[Sequence[Any]] = replies[4:7] if missing else [[], [], []]
    per_partition = replies[7:] if missing else replies[4:]
    if caching and not _catalog_facts.observe(version) and len(missing) < len(set(item_ids)):
        # The catalog changed since the facts kept were read: read them all again (a second round trip).
        missing = list(dict.fromkeys(item_ids))
        pipeline = client.pipeline(transaction=False)
        _queue_catalog(pipeline, user_key, missing)
        columns = pipeline.execute()
    block = _Rows.from_replies(*columns)
    read = {item_id: row for row, item_id in enumerate(missing)}
    rows = _catalog_facts.keep_and_take(version if caching else None, item_ids, read, block)
    if rows is None:  # another request saw a newer catalog meanwhile: this one reads all its facts itself
        missing = list(dict.fromkeys(item_ids))
        pipeline = client.pipeline(transaction=False)
        _queue_catalog(pipeline, user_key, missing)
        block = _Rows.from_replies(*pipeline.execute())
        position = {item_id: row for row, item_id in enumerate(missing)}
        rows = block.take(np.array([position[item_id] for item_id in item_ids], dtype=np.int64))

    recent = [value.decode() for value in recent_raw]
    if recent_last is None or float(recent_last) + AFFINITY_TTL_SECONDS <= now:
        recent = []  # the user's recent items are older than their TTL: missing
    if not recent:
        recent_vectors = []
    elif recent == expected and early_vectors is not None:
        recent_vectors = early_vectors
    else:
        recent_vectors = client.hmget(redis_keys.CATALOG_VECTORS, recent)
    return features_compute(
        replies=[affinity_raw, recent_raw, recent_last, *per_partition], rows=rows, recent_vectors=recent_vectors,
        item_ids=item_ids, now=now, observe=True,
    )  # fmt: skip


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
    rows: _Rows,
    recent_vectors: list[Any],
    item_ids: list[str],
    now: float,
    observe: bool = False,
) -> FeatureMatrix:
    """`replies`: the user's affinity hash, recent items and their time, then each partition's item and placement
    counters; `rows`: the items' catalog facts."""
    count = len(item_ids)
    values = np.full((count, len(FEATURE_NAMES)), np.nan)
    affinity_raw, recent_raw, recent_last = replies[:3]
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
    if observe and seen.any():
        _age_observe(ITEM_EVENT_FEATURES, float(np.min(age[seen])))

    static, known = rows.static, rows.static_known
    values[known, FEATURE_INDEX["item_price"]] = static["price"][known]
    values[known, FEATURE_INDEX["item_in_stock"]] = (static["in_stock"][known] != 0).astype(np.float64)
    values[known, FEATURE_INDEX["item_age_days"]] = (now - static["created_at"][known]) / DAY

    _user_entity_features(values, affinity_raw, rows, now, observe)
    _similarity(values, rows, recent_vectors)
    if observe and recent_vectors and recent_last is not None:
        _age_observe(USER_RECENT_FEATURES, now - float(recent_last))
    return FeatureMatrix(
        item_ids=list(item_ids), values=values, recent_items=[value.decode() for value in recent_raw],
        affinity=affinity_raw, entities=rows.entities,
        recent_valid=bool(recent_raw) and recent_last is not None and float(recent_last) + AFFINITY_TTL_SECONDS > now,
    )  # fmt: skip


def _user_entity_features(
    values: np.ndarray, affinity_raw: dict[bytes, bytes], rows: _Rows, now: float, observe: bool
) -> None:
    last_update = affinity_raw.get(b"_last")
    if last_update is None or float(last_update) + AFFINITY_TTL_SECONDS <= now:
        return  # a new user, or one whose state is older than its TTL: missing
    factor = 2.0 ** (-(now - float(affinity_raw.get(b"_epoch", now))) / AFFINITY_HALF_LIFE_SECONDS)
    if observe:
        latest_category = latest_entity = -math.inf
        for name, value in affinity_raw.items():
            if name.startswith(b"r:category:"):
                latest_category = max(latest_category, float(value))
            elif name.startswith(b"r:"):
                latest_entity = max(latest_entity, float(value))
        if latest_category > -math.inf:
            _age_observe(USER_CATEGORY_FEATURES, now - latest_category)
        if latest_entity > -math.inf:
            _age_observe(USER_ENTITY_FEATURES, now - latest_entity)
    frequency, recency, affinity = (FEATURE_INDEX[name] for name in (
        "user_category_frequency", "user_category_recency_days", "user_item_entity_affinity"
    ))  # fmt: skip
    # The user's counters over the entity numbers (the last slot, NO_ENTITY, stands for "none": 0 and never).
    size = len(_entity_numbers) + 1
    counts, latest = np.zeros(size), np.full(size, np.nan)
    for name, value in affinity_raw.items():
        number = _entity_numbers.get(name[2:])
        if number is None:
            continue  # an entity of none of the items read so far: no row needs it
        if name.startswith(b"f:"):
            counts[number] = float(value)
        elif name.startswith(b"r:"):
            latest[number] = float(value)
    values[:, frequency] = counts[rows.category] * factor
    values[:, recency] = (now - latest[rows.category]) / DAY
    # Summed per row in the items' own order, as one would by hand (the padding adds zeros).
    sums = np.zeros(len(rows.category))
    for column in range(rows.others.shape[1]):
        sums += counts[rows.others[:, column]]
    values[:, affinity] = sums * factor


def _similarity(values: np.ndarray, rows: _Rows, recent_vectors: list[Any]) -> None:
    recent = [np.frombuffer(payload, dtype=np.float32) for payload in recent_vectors if payload]
    if not recent:
        return
    taste = np.mean(recent, axis=0).astype(np.float64)
    norm = float(np.linalg.norm(taste))
    if norm == 0:
        return
    taste /= norm
    present = np.flatnonzero(rows.vector_known)
    if not len(present) or rows.vectors.shape[1] != len(taste):
        return
    matrix = rows.vectors[present].astype(np.float64)
    norms = rows.vector_norms[present]
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = (matrix @ taste) / norms
    values[present, FEATURE_INDEX["user_item_similarity"]] = np.where(norms > 0, cosine, np.nan)
