"""Item popularity recomputed from the durable log (control plane), stored by the graph (`ItemPopularity`).

The hot path ranks by the online, per-event popularity windows in Redis (graph_app/state/ingest.lua); this
copy in PostgreSQL is what recommendations fall back to when Redis is unavailable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.db import connection

from graph_app.services import item_popularity_replace
from graph_app.state.event_types import BUILT_IN_EVENT_TYPES
from graph_app.state.ingest import TREND_WINDOWS
from graph_app.state.reads import POPULAR_WINDOW

logger = logging.getLogger(__name__)

POPULARITY_WINDOW_DAYS = 30

_DECAYED_POPULARITY_SQL = """
SELECT e.item_id,
       sum(w.weight * power(2, -extract(epoch FROM (now() - e.occurred_at)) / %(half_life)s))
FROM signals_app_event e
JOIN unnest(%(types)s::text[], %(weights)s::float8[]) AS w(type, weight) ON w.type = e.type
WHERE e.item_id <> '' AND e.occurred_at > now() - make_interval(days => %(window)s) AND e.occurred_at <= now()
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
                "half_life": float(TREND_WINDOWS[POPULAR_WINDOW]),
                "window": POPULARITY_WINDOW_DAYS,
            },
        )
        scores = {item_id: float(score) for item_id, score in cursor.fetchall()}

    item_popularity_replace(scores=scores)
    top_item = max(scores, key=lambda item_id: scores[item_id]) if scores else None
    logger.info("signals.popularity_refreshed", extra={"items": len(scores), "top_item": top_item})
    return PopularityReport(items=len(scores), top_item=top_item)
