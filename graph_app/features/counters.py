"""Rebuilding the online item counters from the PostgreSQL log: after an upgrade that changed their layout, or
after Redis lost them.

The feature store reads each item's popularity windows and its clicks and impressions in a placement as packed
records (see `signals_app.online_state.PACKED_ADD_LUA`), summed over the event partitions. The rebuild computes
every record from the log with the offline materialization's formulas (late events excluded, as online) and
writes it to partition 0, emptying the others: the sums are what they would have been. Events ingested while it
runs may be counted twice or not at all: run it while ingest is paused, or accept that for a few seconds.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import redis
from django.db import connection

from graph_app.features.definitions import CTR_HALF_LIFE_SECONDS, POPULARITY_HALF_LIVES
from graph_app.features.offline import event_types
from personalization import redis_keys
from personalization.redis_client import get_control_redis
from signals_app.online_state import DEDUPE_WINDOW_SECONDS

WRITE_BATCH = 5000

_ITEM_COUNTERS_SQL = """
WITH e AS (
  SELECT e.item_id, e.occurred_at, w.weight
  FROM signals_app_event e
  JOIN unnest(%(types)s::text[], %(weights)s::float8[]) AS w(type, weight) ON w.type = e.type
  WHERE e.item_id <> '' AND e.received_at - e.occurred_at <= make_interval(secs => %(late)s)
), l AS (SELECT item_id, max(occurred_at) AS last FROM e GROUP BY item_id)
SELECT e.item_id,
       sum(e.weight * power(2, greatest(-extract(epoch FROM l.last - e.occurred_at)::float8 / %(h1)s, -1000))),
       sum(e.weight * power(2, greatest(-extract(epoch FROM l.last - e.occurred_at)::float8 / %(h2)s, -1000))),
       sum(e.weight * power(2, greatest(-extract(epoch FROM l.last - e.occurred_at)::float8 / %(h3)s, -1000))),
       extract(epoch FROM l.last)::float8
FROM e JOIN l USING (item_id)
GROUP BY e.item_id, l.last
"""

_PLACEMENT_COUNTERS_SQL = """
WITH c AS (
  SELECT placement, item_id, occurred_at AS at, 1.0::float8 AS clicked, 0.0::float8 AS shown
  FROM signals_app_event
  WHERE type = 'click' AND placement <> '' AND item_id <> ''
    AND received_at - occurred_at <= make_interval(secs => %(late)s)
  UNION ALL
  SELECT placement, item_id, served_at, 0.0, 1.0 FROM signals_app_impression
), l AS (SELECT placement, item_id, max(at) AS last FROM c GROUP BY placement, item_id)
SELECT c.placement, c.item_id,
       sum(c.clicked * power(2, greatest(-extract(epoch FROM l.last - c.at)::float8 / %(h)s, -1000))),
       sum(c.shown * power(2, greatest(-extract(epoch FROM l.last - c.at)::float8 / %(h)s, -1000))),
       extract(epoch FROM l.last)::float8
FROM c JOIN l USING (placement, item_id)
GROUP BY c.placement, c.item_id, l.last
"""


@dataclass(frozen=True)
class CountersReport:
    items: int
    placement_items: int


def item_counters_rebuild() -> CountersReport:
    weighted = {name: kind.popularity_weight for name, kind in event_types().items() if kind.popularity_weight > 0}
    windows = list(POPULARITY_HALF_LIVES.values())
    item_format = struct.Struct("<" + "d" * (len(windows) + 1))
    placement_format = struct.Struct("<ddd")
    with connection.cursor() as cursor:
        cursor.execute(
            _ITEM_COUNTERS_SQL,
            {"types": list(weighted), "weights": list(weighted.values()), "late": DEDUPE_WINDOW_SECONDS,
             "h1": windows[0], "h2": windows[1], "h3": windows[2]},
        )  # fmt: skip
        items = {item_id: item_format.pack(*values) for item_id, *values in cursor.fetchall()}
        cursor.execute(_PLACEMENT_COUNTERS_SQL, {"late": DEDUPE_WINDOW_SECONDS, "h": CTR_HALF_LIFE_SECONDS})
        placements: dict[str, dict[str, bytes]] = {}
        for placement, item_id, *values in cursor.fetchall():
            placements.setdefault(placement, {})[item_id] = placement_format.pack(*values)

    client = get_control_redis()
    for partition in redis_keys.partitions():  # one key a command: Cluster-safe
        client.delete(redis_keys.item_counters(partition))
        for key in client.scan_iter(match=redis_keys.placement_counters(partition, "*"), count=1000):
            client.delete(key)
    _write(client, redis_keys.item_counters(0), items)
    for placement, records in placements.items():
        _write(client, redis_keys.placement_counters(0, placement), records)
    return CountersReport(items=len(items), placement_items=sum(len(records) for records in placements.values()))


def _write(client: redis.Redis, key: str, records: dict[str, bytes]) -> None:
    names = list(records)
    for start in range(0, len(names), WRITE_BATCH):
        client.hset(key, mapping={name: records[name] for name in names[start : start + WRITE_BATCH]})
