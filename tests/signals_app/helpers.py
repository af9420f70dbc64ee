"""Shared steps for Signal-layer tests."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import count

from graph_app.state.reads import popular_items
from personalization import redis_keys
from personalization.redis_client import get_redis
from signals_app.services import events_ingest

_ids = count()


def ingest_views(item_counts: dict[str, int], *, user_prefix: str = "crowd") -> None:
    """Real view events (one per user) so that items get online popularity, the way production gets it."""
    events = []
    for item_id, views in item_counts.items():
        for view in range(views):
            number = next(_ids)
            events.append(
                {"event_id": f"seed-{number}", "type": "view", "user_id": f"{user_prefix}-{view}", "item_id": item_id}
            )
    for start in range(0, len(events), 500):
        events_ingest(raw_events=events[start : start + 500])


def online_popularity(depth: int = 50) -> dict[str, float]:
    return dict(popular_items(get_redis(), depth=depth, now=datetime.now(UTC).timestamp()))


def stream_lengths() -> int:
    return sum(get_redis().xlen(redis_keys.event_stream(partition)) for partition in redis_keys.partitions())
