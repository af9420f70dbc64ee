"""Item popularity rebuilt from the durable log with exponential time decay (control plane).

The result replaces the Redis sorted set read by the hot path (atomically, via RENAME) and is copied to
`Item.popularity`, the fallback when Redis is unavailable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.db import connection, transaction

from personalization import redis_keys
from personalization.redis_client import get_redis
from signals_app.event_types import BUILT_IN_EVENT_TYPES

logger = logging.getLogger(__name__)

POPULARITY_WINDOW_DAYS = 30
POPULARITY_HALF_LIFE_DAYS = 3.0
REDIS_WRITE_BATCH_SIZE = 5000

_DECAYED_POPULARITY_SQL = """
SELECT e.item_id,
       sum(w.weight * exp(-ln(2) * extract(epoch FROM (now() - e.occurred_at)) / 86400.0 / %(half_life)s))
FROM signals_app_event e
JOIN unnest(%(types)s::text[], %(weights)s::float8[]) AS w(type, weight) ON w.type = e.type
WHERE e.item_id <> '' AND e.occurred_at > now() - make_interval(days => %(window)s)
GROUP BY e.item_id
"""


@dataclass(frozen=True)
class PopularityReport:
    items: int
    top_item: str | None


def popularity_refresh() -> PopularityReport:
    types = [name for name, kind in BUILT_IN_EVENT_TYPES.items() if kind.popularity_weight > 0]
    with connection.cursor() as cursor:
        cursor.execute(
            _DECAYED_POPULARITY_SQL,
            {
                "types": types,
                "weights": [BUILT_IN_EVENT_TYPES[name].popularity_weight for name in types],
                "half_life": POPULARITY_HALF_LIFE_DAYS,
                "window": POPULARITY_WINDOW_DAYS,
            },
        )
        scores = {item_id: float(score) for item_id, score in cursor.fetchall()}

    redis = get_redis()
    staging_key = redis_keys.ITEM_POPULARITY + ":staging"
    redis.delete(staging_key)
    pairs = list(scores.items())
    for start in range(0, len(pairs), REDIS_WRITE_BATCH_SIZE):
        redis.zadd(staging_key, dict(pairs[start : start + REDIS_WRITE_BATCH_SIZE]))
    if pairs:
        redis.rename(staging_key, redis_keys.ITEM_POPULARITY)
    else:
        redis.delete(redis_keys.ITEM_POPULARITY)

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE graph_app_item SET popularity = 0 WHERE popularity <> 0")
        cursor.execute(
            "UPDATE graph_app_item AS i SET popularity = p.score "
            "FROM unnest(%s::text[], %s::float8[]) AS p(id, score) WHERE i.external_id = p.id",
            [list(scores), list(scores.values())],
        )
    top_item = max(scores, key=lambda item_id: scores[item_id]) if scores else None
    logger.info("signals.popularity_refreshed", extra={"items": len(scores), "top_item": top_item})
    return PopularityReport(items=len(scores), top_item=top_item)
