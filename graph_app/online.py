"""The catalog facts the ingest script needs, copied into every event partition in Redis.

The ingest script updates a user's per-entity counters from the item's entities, and it may only touch keys of
its own partition (one Redis Cluster slot), so each partition holds its own copy of item -> entities. Written
by the control plane on every item change; `catalog_entities_rebuild` repairs it from PostgreSQL.
"""

from __future__ import annotations

import math
import struct
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from django.db import connection

from graph_app.features.user_affinity import entity_names_learn
from personalization import redis_keys
from personalization.redis_client import get_control_redis

REBUILD_BATCH_SIZE = 5000


def entity_keys(*, category: str, entities: list[tuple[str, str]]) -> str:
    keys = [f"category:{category}"] if category else []
    keys += [f"{kind}:{external_id}" for kind, external_id in entities if (kind, external_id) != ("category", category)]
    return "|".join(dict.fromkeys(key.replace("|", "/") for key in keys))


# Versions whose changed items serving processes can look up (each reads the whole list when the version moves:
# keep it short); one that fell behind further drops everything.
CATALOG_CHANGES_KEPT = 64
# A change of more items than this is recorded as "any item" (a bulk import: cheaper to read everything again).
CATALOG_CHANGE_MAX_ITEMS = 500
CHANGE_SEPARATOR = "\x1e"
ITEM_SEPARATOR = "\x1f"
ANY_ITEM = "*"


def catalog_version_bump(changed: Iterable[Any] | None = None) -> None:
    """After a write of the catalog copies has completed (a separate call: on a Redis Cluster the version lives
    in another slot, and a reader must never see the new version before the new facts). `changed`: the items
    whose facts the write changed (None: any may have, as after a rebuild)."""
    # A token, not a counter: a Redis that lost its data and counts again must not repeat a version a process
    # still keeps facts of.
    token = uuid.uuid4().hex
    items = None if changed is None else [str(item_id) for item_id in changed]
    if items is None or len(items) > CATALOG_CHANGE_MAX_ITEMS:
        items = [ANY_ITEM]
    client = get_control_redis()
    # The change first, then the version: whoever reads the version finds its change.
    pipeline = client.pipeline(transaction=False)
    pipeline.rpush(redis_keys.CATALOG_CHANGES, token + CHANGE_SEPARATOR + ITEM_SEPARATOR.join(items))
    pipeline.ltrim(redis_keys.CATALOG_CHANGES, -CATALOG_CHANGES_KEPT, -1)
    pipeline.execute()
    client.set(redis_keys.CATALOG_VERSION, token)


def catalog_changes_since(entries: list[bytes], kept: bytes, current: bytes) -> set[str] | None:
    """The items changed by every version listed after `kept` in the change list (`catalog:changes`), `current`
    among them; None when that cannot be told (`kept` no longer listed, `current` not listed yet, or a change of
    any item). Every later entry counts, not only those up to `current`: two writers may push their changes in
    one order and set the version in the other, and dropping a few facts too many costs only a read."""
    tokens = [entry.split(CHANGE_SEPARATOR.encode(), 1) for entry in entries]
    positions = {parts[0]: index for index, parts in enumerate(tokens)}
    start, end = positions.get(kept), positions.get(current)
    if start is None or end is None:
        return None
    changed: set[str] = set()
    for parts in tokens[start + 1 :]:
        items = parts[1].decode().split(ITEM_SEPARATOR) if len(parts) > 1 else [ANY_ITEM]
        if ANY_ITEM in items:
            return None
        changed.update(items)
    return changed


def catalog_entities_publish(*, items: Mapping[Any, str]) -> None:
    """items: item id -> entity keys ("" to forget the item)."""
    if not items:
        return
    pipeline = get_control_redis().pipeline(transaction=False)
    _entities_queue(pipeline, items)
    pipeline.execute()
    catalog_version_bump(items.keys())


def _entities_queue(pipeline: Any, items: Mapping[Any, str]) -> None:
    """Queue the items' entity keys ("" to forget the item) in every partition's copy."""
    present = {item_id: keys for item_id, keys in items.items() if keys}
    absent = [item_id for item_id, keys in items.items() if not keys]
    if present:
        # Users' affinity hashes name entities by code: the decoder names them again from here.
        distinct = {key for keys in present.values() for key in keys.split("|") if key}
        pipeline.hset(redis_keys.CATALOG_ENTITY_NAMES, mapping=entity_names_learn(sorted(distinct)))
    for partition in redis_keys.partitions():
        key = redis_keys.catalog_entities(partition)
        if present:
            pipeline.hset(key, mapping=present)
        if absent:
            pipeline.hdel(key, *absent)


def catalog_entities_rebuild() -> int:
    entities: dict[int, list[tuple[str, str]]] = defaultdict(list)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT l.item_id, e.kind, e.external_id FROM graph_app_itementity l "
            "JOIN graph_app_entity e ON e.id = l.entity_id ORDER BY l.item_id, e.kind, e.external_id"
        )
        for item_pk, kind, external_id in cursor.fetchall():
            entities[item_pk].append((kind, external_id))
        cursor.execute("SELECT id, external_id, category FROM graph_app_item")
        rows = cursor.fetchall()
    for partition in redis_keys.partitions():
        get_control_redis().delete(redis_keys.catalog_entities(partition))
    catalog_version_bump()
    for start in range(0, len(rows), REBUILD_BATCH_SIZE):
        batch = rows[start : start + REBUILD_BATCH_SIZE]
        catalog_entities_publish(
            items={
                external_id: entity_keys(category=category, entities=entities.get(pk, []))
                for pk, external_id, category in batch
            }
        )
    return len(rows)


STATIC_FORMAT = struct.Struct("<dBd")  # price (NaN when unknown), in stock, created at (Unix seconds)
# The same layout for numpy, to decode hundreds at once.
STATIC_DTYPE = np.dtype([("price", "<f8"), ("in_stock", "u1"), ("created_at", "<f8")])
_IN_STOCK_OFFSET = struct.calcsize("<d")  # the in-stock flag follows the price
_STATIC_SIZE = STATIC_FORMAT.size


def pack_static(*, price: float | None, in_stock: bool, created_at: float) -> bytes:
    return STATIC_FORMAT.pack(math.nan if price is None else float(price), 1 if in_stock else 0, created_at)


def static_in_stock(payload: bytes) -> bool:
    """The in-stock flag of packed static facts, read without unpacking the rest (stock checks of hundreds)."""
    return len(payload) == _STATIC_SIZE and payload[_IN_STOCK_OFFSET] != 0


def unpack_static(payload: bytes) -> tuple[float, bool, float]:
    price, in_stock, created_at = STATIC_FORMAT.unpack(payload)
    return price, bool(in_stock), created_at


def catalog_items_publish(
    *, static: Mapping[Any, bytes], vectors: Mapping[Any, bytes], forget: tuple[str, ...] = ()
) -> None:
    """Item facts the feature store reads online: packed static facts and float32 embeddings."""
    pipeline = get_control_redis().pipeline(transaction=False)
    _facts_queue(pipeline, static, vectors, forget)
    pipeline.execute()
    catalog_version_bump({*static, *vectors, *forget})


def _facts_queue(
    pipeline: Any, static: Mapping[Any, bytes], vectors: Mapping[Any, bytes], forget: tuple[str, ...]
) -> None:
    """Queue the items' packed static facts and embeddings, and the removal of those of `forget`."""
    if static:
        pipeline.hset(redis_keys.CATALOG_STATIC, mapping=static)
    if vectors:
        pipeline.hset(redis_keys.CATALOG_VECTORS, mapping=vectors)
    if forget:
        pipeline.hdel(redis_keys.CATALOG_STATIC, *forget)
        pipeline.hdel(redis_keys.CATALOG_VECTORS, *forget)


def catalog_write(
    *,
    entities: Mapping[Any, str],
    static: Mapping[Any, bytes],
    vectors: Mapping[Any, bytes],
    forget: tuple[str, ...],
    changed: Iterable[str] | None = None,
) -> None:
    """A catalog write's facts (entity keys, "" to forget; static facts; embeddings; items deleted) in one pipeline
    and one version bump: what `catalog_entities_publish` and `catalog_items_publish` do, for a batch. `changed`:
    the items whose facts differ from what was written before (None: all); no version bump when none does, so
    that serving keeps the facts it read (a feed resent unchanged rewrites the same values)."""
    pipeline = get_control_redis().pipeline(transaction=False)
    _entities_queue(pipeline, entities)
    _facts_queue(pipeline, static, vectors, forget)
    if len(pipeline):
        pipeline.execute()
    moved = {*entities, *static, *vectors, *forget} if changed is None else set(changed)
    if moved:
        catalog_version_bump(moved)


def catalog_items_rebuild() -> int:
    """Copy every item's static facts and embedding from PostgreSQL to Redis (after training, or as a repair)."""
    redis = get_control_redis()
    for key in (redis_keys.CATALOG_STATIC, redis_keys.CATALOG_VECTORS):  # one key a command: Cluster-safe
        redis.delete(key)
    catalog_version_bump()
    from graph_app.models import Item

    count = 0
    rows = Item.objects.values_list("external_id", "price", "in_stock", "created_at", "embedding")
    batch: list[tuple[str, object, bool, object, object]] = []
    for row in rows.iterator(chunk_size=REBUILD_BATCH_SIZE):
        batch.append(row)
        if len(batch) == REBUILD_BATCH_SIZE:
            count += catalog_rows_publish(batch)
            batch = []
    count += catalog_rows_publish(batch)
    return count


def catalog_rows_publish(rows: list[tuple[str, object, bool, object, object]]) -> int:
    static = {
        item_id: pack_static(
            price=None if price is None else float(price),  # type: ignore[arg-type]
            in_stock=in_stock,
            created_at=created.timestamp(),  # type: ignore[attr-defined]
        )
        for item_id, price, in_stock, created, _ in rows
    }
    vectors = {
        item_id: np.asarray(vector, dtype=np.float32).tobytes()
        for item_id, _, _, _, vector in rows
        if vector is not None
    }
    catalog_items_publish(static=static, vectors=vectors)
    return len(rows)


def catalog_online_rebuild() -> int:
    catalog_entities_rebuild()
    return catalog_items_rebuild()
