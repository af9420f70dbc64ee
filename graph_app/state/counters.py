"""Rebuilding the online item counters from the PostgreSQL log: after an upgrade that changed their layout, after
restoring the log, or after Redis lost them (`manage.py rebuild_item_counters`, `manage.py rebuild_online_state`).

The feature store reads each item's popularity windows and its clicks and impressions in a placement as packed
records (see `graph_app/state/packed_add.lua`), summed over the event partitions; the popular items are
read from the popularity windows' forward-decayed sorted sets, also summed over the partitions. The rebuild
computes every record and score from the log with the offline materialization's formulas (every event, late ones
too, as the online path applies them) and writes them to partition 0, emptying the others: the sums are what they
would have been. Each sum adds its terms in event-time order (then by row id), so a rebuild is reproducible.
Events ingested while it runs may be counted twice or not at all: run it while ingest is paused, or accept that for
a few seconds.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from typing import Any

import redis
from django.db import connection

from graph_app.features.definitions import CTR_HALF_LIFE_SECONDS, POPULARITY_HALF_LIVES
from graph_app.state.custom_types import event_types
from personalization import redis_keys
from personalization.redis_client import get_control_redis

WRITE_BATCH = 5000

# The values at the item's latest event, then its time.
_ITEM_COUNTERS_SQL = """
WITH e AS (
  SELECT e.id, e.item_id, e.occurred_at, w.weight
  FROM signals_app_event e
  JOIN unnest(%(types)s::text[], %(weights)s::float8[]) AS w(type, weight) ON w.type = e.type
  WHERE e.item_id <> ''
), l AS (SELECT item_id, max(occurred_at) AS last FROM e GROUP BY item_id)
SELECT e.item_id,
       sum(e.weight * power(2, greatest(-extract(epoch FROM l.last - e.occurred_at)::float8 / %(h1)s, -1000))
           ORDER BY e.occurred_at, e.id),
       sum(e.weight * power(2, greatest(-extract(epoch FROM l.last - e.occurred_at)::float8 / %(h2)s, -1000))
           ORDER BY e.occurred_at, e.id),
       sum(e.weight * power(2, greatest(-extract(epoch FROM l.last - e.occurred_at)::float8 / %(h3)s, -1000))
           ORDER BY e.occurred_at, e.id),
       extract(epoch FROM l.last)::float8
FROM e JOIN l USING (item_id)
GROUP BY e.item_id, l.last
"""

# Forward-decayed scores against one epoch (the rebuild's start): what ZINCRBY adds up online.
_ITEM_TRENDS_SQL = """
SELECT e.item_id,
       sum(w.weight * power(2, greatest(extract(epoch FROM e.occurred_at)::float8 - %(epoch)s, -1000 * %(h1)s) / %(h1)s)
           ORDER BY e.occurred_at, e.id),
       sum(w.weight * power(2, greatest(extract(epoch FROM e.occurred_at)::float8 - %(epoch)s, -1000 * %(h2)s) / %(h2)s)
           ORDER BY e.occurred_at, e.id),
       sum(w.weight * power(2, greatest(extract(epoch FROM e.occurred_at)::float8 - %(epoch)s, -1000 * %(h3)s) / %(h3)s)
           ORDER BY e.occurred_at, e.id)
FROM signals_app_event e
JOIN unnest(%(types)s::text[], %(weights)s::float8[]) AS w(type, weight) ON w.type = e.type
WHERE e.item_id <> ''
GROUP BY e.item_id
"""

_PLACEMENT_COUNTERS_SQL = """
WITH c AS (
  SELECT placement, item_id, occurred_at AS at, id::text AS tie, 1.0::float8 AS clicked, 0.0::float8 AS shown
  FROM signals_app_event
  WHERE type = 'click' AND placement <> '' AND item_id <> ''
  UNION ALL
  SELECT placement, item_id, served_at, request_id || ':' || slot, 0.0, 1.0 FROM signals_app_impression
), l AS (SELECT placement, item_id, max(at) AS last FROM c GROUP BY placement, item_id)
SELECT c.placement, c.item_id,
       sum(c.clicked * power(2, greatest(-extract(epoch FROM l.last - c.at)::float8 / %(h)s, -1000))
           ORDER BY c.at, c.clicked, c.tie),
       sum(c.shown * power(2, greatest(-extract(epoch FROM l.last - c.at)::float8 / %(h)s, -1000))
           ORDER BY c.at, c.clicked, c.tie),
       extract(epoch FROM l.last)::float8
FROM c JOIN l USING (placement, item_id)
GROUP BY c.placement, c.item_id, l.last
"""


@dataclass(frozen=True)
class CountersReport:
    items: int
    placement_items: int


def item_counters_rebuild() -> CountersReport:
    """The items' packed counters, their clicks and impressions per placement and the popularity windows."""
    weighted = {name: kind.popularity_weight for name, kind in event_types().items() if kind.popularity_weight > 0}
    windows = list(POPULARITY_HALF_LIVES.values())
    item_format = struct.Struct("<" + "d" * (len(windows) + 1))
    placement_format = struct.Struct("<ddd")
    epoch = time.time()
    weights: dict[str, Any] = {"types": list(weighted), "weights": list(weighted.values())}
    half_lives: dict[str, Any] = {"h1": windows[0], "h2": windows[1], "h3": windows[2]}
    with connection.cursor() as cursor:
        cursor.execute(_ITEM_COUNTERS_SQL, {**weights, **half_lives})
        items = {item_id: item_format.pack(*values) for item_id, *values in cursor.fetchall()}
        cursor.execute(_ITEM_TRENDS_SQL, {**weights, **half_lives, "epoch": epoch})
        trends: dict[str, dict[str, float]] = {window: {} for window in POPULARITY_HALF_LIVES}
        for item_id, *scores in cursor.fetchall():
            for window, score in zip(POPULARITY_HALF_LIVES, scores, strict=True):
                trends[window][item_id] = float(score)
        cursor.execute(_PLACEMENT_COUNTERS_SQL, {"h": CTR_HALF_LIFE_SECONDS})
        placements: dict[str, dict[str, bytes]] = {}
        for placement, item_id, *values in cursor.fetchall():
            placements.setdefault(placement, {})[item_id] = placement_format.pack(*values)

    client = get_control_redis()
    for partition in redis_keys.partitions():  # one key a command: Cluster-safe
        client.delete(redis_keys.item_counters(partition))
        client.delete(redis_keys.item_trend_epochs(partition))
        for window in POPULARITY_HALF_LIVES:
            client.delete(redis_keys.item_trend(partition, window))
        for key in client.scan_iter(match=redis_keys.placement_counters(partition, "*"), count=1000):
            client.delete(key)
    _write(client, redis_keys.item_counters(0), items)
    for window, scores in trends.items():
        _write_scores(client, redis_keys.item_trend(0, window), scores)
        if scores:
            client.hset(redis_keys.item_trend_epochs(0), redis_keys.item_trend(0, window), repr(epoch))
    for placement, records in placements.items():
        _write(client, redis_keys.placement_counters(0, placement), records)
    return CountersReport(items=len(items), placement_items=sum(len(records) for records in placements.values()))


def _write(client: redis.Redis, key: str, records: dict[str, bytes]) -> None:
    names = list(records)
    for start in range(0, len(names), WRITE_BATCH):
        client.hset(key, mapping={name: records[name] for name in names[start : start + WRITE_BATCH]})


def _write_scores(client: redis.Redis, key: str, scores: dict[str, float]) -> None:
    names = list(scores)
    for start in range(0, len(names), WRITE_BATCH):
        client.zadd(key, {name: scores[name] for name in names[start : start + WRITE_BATCH]})
