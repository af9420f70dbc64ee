"""The catalog facts the ingest script needs, copied into every event partition in Redis.

The ingest script updates a user's per-entity counters from the item's entities, and it may only touch keys of
its own partition (one Redis Cluster slot), so each partition holds its own copy of item -> entities. Written
by the control plane on every item change; `catalog_entities_rebuild` repairs it from PostgreSQL.
"""

from __future__ import annotations

from collections import defaultdict

from django.db import connection

from personalization import redis_keys
from personalization.redis_client import get_redis

REBUILD_BATCH_SIZE = 5000


def entity_keys(*, category: str, entities: list[tuple[str, str]]) -> str:
    keys = [f"category:{category}"] if category else []
    keys += [f"{kind}:{external_id}" for kind, external_id in entities if (kind, external_id) != ("category", category)]
    return "|".join(dict.fromkeys(key.replace("|", "/") for key in keys))


def catalog_entities_publish(*, items: dict[str, str]) -> None:
    """items: item id -> entity keys ("" to forget the item)."""
    if not items:
        return
    pipeline = get_redis().pipeline(transaction=False)
    present = {item_id: keys for item_id, keys in items.items() if keys}
    absent = [item_id for item_id, keys in items.items() if not keys]
    for partition in redis_keys.partitions():
        key = redis_keys.catalog_entities(partition)
        if present:
            pipeline.hset(key, mapping=present)
        if absent:
            pipeline.hdel(key, *absent)
    pipeline.execute()


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
        get_redis().delete(redis_keys.catalog_entities(partition))
    for start in range(0, len(rows), REBUILD_BATCH_SIZE):
        batch = rows[start : start + REBUILD_BATCH_SIZE]
        catalog_entities_publish(
            items={
                external_id: entity_keys(category=category, entities=entities.get(pk, []))
                for pk, external_id, category in batch
            }
        )
    return len(rows)
