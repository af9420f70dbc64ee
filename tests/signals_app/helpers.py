"""Shared steps for Signal-layer tests."""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path

import pytest
from django.utils import timezone

from graph_app.features.definitions import CTR_HALF_LIFE_SECONDS, POPULARITY_HALF_LIVES
from graph_app.features.user_affinity import affinity_decode
from graph_app.state.reads import popular_items
from personalization import redis_keys
from personalization.redis_client import get_redis
from signals_app.consumer import events_drain_all
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


def ago(**delta: float) -> str:
    return (timezone.now() - timedelta(**delta)).isoformat()


def event(event_id: str, item_id: str, timestamp: str, type: str = "view", user_id: str = "u1", **fields):
    return {
        "event_id": event_id,
        "type": type,
        "user_id": user_id,
        "item_id": item_id,
        "timestamp": timestamp,
        **fields,
    }


def drain() -> None:
    while events_drain_all().read:
        pass


@pytest.fixture
def catalog(api_client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):  # the items' entities reach Redis after commit
        for item_id, category in [("a", "kitchen"), ("b", "kitchen"), ("x", "garden"), ("old", "garden")]:
            api_client.put(
                f"/api/v1/items/{item_id}",
                {"title": item_id, "category": category, "entities": [{"kind": "brand", "id": "acme"}]},
                format="json",
            )


def recent(client, user: str = "u1") -> list[str]:
    return [item.decode() for item in client.lrange(redis_keys.user_recent_items(user), 0, -1)]


def jsonl(path: Path, *events: dict) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in events))
    return path


# What the rebuild must reproduce: every user and item key that ingest writes (session items aside), decoded to
# values at one instant so that different decay epochs compare equal.
def user_snapshot(client, user: str, at: float) -> dict[str, object]:
    affinity = affinity_decode(client.hgetall(redis_keys.user_affinity(user)))
    factor = affinity.factor(at)
    assert not client.exists(redis_keys.user_recent_last(user))  # the layout before "#r"
    return {
        "recent": recent(client, user),
        "recent_last": affinity.recent_last,
        "affinity": {name.decode(): value * factor for name, value in affinity.counters.items()},
        "category_times": {name.decode(): value for name, value in affinity.category_times.items()},
        "affinity_last": affinity.last,
        "purchased": dict(client.zrange(redis_keys.user_purchased(user), 0, -1, withscores=True)),
        "cooldown": dict(client.zrange(redis_keys.user_cooldown(user), 0, -1, withscores=True)),
    }


def approx_all(value: object) -> object:
    """`value` with every number compared within float tolerance."""
    if isinstance(value, dict):
        return {key: approx_all(inner) for key, inner in value.items()}
    if isinstance(value, tuple):
        return tuple(approx_all(inner) for inner in value)
    if isinstance(value, list) and value and isinstance(value[0], float):
        return pytest.approx(value, rel=1e-6, abs=1e-12)
    return pytest.approx(value, rel=1e-6, abs=1e-12) if isinstance(value, float) else value


def packed_now(client, key: str, half_lives: list[float], at: float) -> dict[str, list[float]]:
    totals: dict[str, list[float]] = {}
    for partition in redis_keys.partitions():
        for item, packed in client.hgetall(key.replace("{p0}", f"{{p{partition}}}")).items():
            *values, last = struct.unpack(f"<{len(half_lives) + 1}d", packed)
            decayed = [
                value * 2 ** (-(at - last) / half_life) for value, half_life in zip(values, half_lives, strict=True)
            ]
            row = totals.setdefault(item.decode(), [0.0] * len(half_lives))
            totals[item.decode()] = [a + b for a, b in zip(row, decayed, strict=True)]
    return totals


def items_snapshot(client, at: float) -> dict[str, object]:
    windows = list(POPULARITY_HALF_LIVES.values())
    return {
        "counters": packed_now(client, redis_keys.item_counters(0), windows, at),
        "ctr": packed_now(client, redis_keys.placement_counters(0, "home"), [CTR_HALF_LIFE_SECONDS] * 2, at),
        **{
            f"trend_{window}": dict(popular_items(client, depth=100, now=at, window=window))
            for window in POPULARITY_HALF_LIVES
        },
    }
