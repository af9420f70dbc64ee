"""Reading the online state the ingest script writes (hot path: plain Python over Redis replies).

Popularity is kept per partition; a read queues each partition's top items on the caller's pipeline (so it
shares the caller's round trip) and merges them, turning forward-decayed scores into values at `now`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from graph_app.state.ingest import TREND_WINDOWS
from personalization import redis_keys

POPULAR_WINDOW = "1d"


def queue_popular(pipeline: redis.client.Pipeline, *, depth: int, window: str = POPULAR_WINDOW) -> int:
    """Queue the reads for the `depth` most popular items; returns how many replies they take."""
    for partition in redis_keys.partitions():
        key = redis_keys.item_trend(partition, window)
        # Raw, without redis-py's `withscores` callback: on RESP3 it formats every score back to bytes to parse it
        # again (120 members a request); `decode_popular` reads either protocol's shape.
        pipeline.execute_command("ZREVRANGE", key, 0, depth - 1, "WITHSCORES")  # type: ignore[no-untyped-call]
        pipeline.hget(redis_keys.item_trend_epochs(partition), key)
    return 2 * len(redis_keys.partitions())


def decode_popular(
    replies: list[Any], *, now: float, depth: int, window: str = POPULAR_WINDOW
) -> list[tuple[str, float]]:
    """(item id, decayed popularity at `now`), most popular first."""
    half_life = TREND_WINDOWS[window]
    totals: dict[str, float] = {}
    for position in range(0, len(replies), 2):
        members, epoch = replies[position], replies[position + 1]
        if not members or epoch is None:
            continue
        factor = 2 ** (-(now - float(epoch)) / half_life)
        # RESP3: [[member, score], ...]; RESP2: [member, score, member, score, ...].
        pairs = members if isinstance(members[0], list) else zip(members[0::2], members[1::2], strict=True)
        for member, score in pairs:
            item_id = member.decode()
            totals[item_id] = totals.get(item_id, 0.0) + float(score) * factor
    return sorted(totals.items(), key=lambda pair: pair[1], reverse=True)[:depth]


def popular_items(
    client: redis.Redis, *, depth: int, now: float, window: str = POPULAR_WINDOW
) -> list[tuple[str, float]]:
    pipeline = client.pipeline(transaction=False)
    queue_popular(pipeline, depth=depth, window=window)
    return decode_popular(pipeline.execute(), now=now, depth=depth, window=window)


@dataclass(frozen=True)
class PopularRead:
    """The popular items' reads queued on a caller's pipeline: where their replies start and how many they take."""

    start: int
    count: int
    depth: int
    window: str

    def __call__(self, replies: Sequence[Any], *, now: float) -> list[tuple[str, float]]:
        """(item id, decayed popularity at `now`) from the pipeline's replies, most popular first."""
        mine = list(replies[self.start : self.start + self.count])
        return decode_popular(mine, now=now, depth=self.depth, window=self.window)


def popular_items_queue(pipeline: redis.client.Pipeline, *, depth: int, window: str = POPULAR_WINDOW) -> PopularRead:
    """Queue the reads of the `depth` most popular items on the caller's pipeline; the returned reader picks their
    replies out of the pipeline's."""
    start = len(pipeline)
    return PopularRead(start, queue_popular(pipeline, depth=depth, window=window), depth, window)


# One read each of a user's online state, queued on the caller's pipeline (one reply each, in the order queued):
# the keys stay this package's, the round trip the caller's.


def recent_items_queue(pipeline: redis.client.Pipeline, *, user_key: str, depth: int) -> None:
    """The user's `depth` latest items of interest, newest first (a list of bytes)."""
    pipeline.lrange(redis_keys.user_recent_items(user_key), 0, depth - 1)


def affinity_queue(pipeline: redis.client.Pipeline, *, user_key: str) -> None:
    """The user's affinity hash as stored (`graph_app.features.user_affinity.affinity_decode` reads it)."""
    pipeline.hgetall(redis_keys.user_affinity(user_key))


def purchased_queue(pipeline: redis.client.Pipeline, *, user_key: str) -> None:
    """What the user bought, the latest last (a list of item ids as bytes)."""
    pipeline.zrange(redis_keys.user_purchased(user_key), 0, -1)


def cooldown_queue(pipeline: redis.client.Pipeline, *, user_key: str, since: float) -> None:
    """The items the user hid or skipped after `since`, with when ([(item, time)], oldest first)."""
    pipeline.zrangebyscore(redis_keys.user_cooldown(user_key), f"({since!r}", "+inf", withscores=True)


def cooldown_key(*, user_key: str) -> str:
    """The user's cool-down set, for a script of another owner that reads it atomically with its own keys (the caps'
    enforce script): read only."""
    return redis_keys.user_cooldown(user_key)


@dataclass(frozen=True)
class UserStateReplies:
    """A user's online state as stored: the affinity hash, the latest items of interest (newest first), and the
    time of the latest one from its key of the layout before the hash kept it (None: none)."""

    affinity: dict[bytes, bytes]
    recent: list[bytes]
    legacy_recent_last: bytes | None


@dataclass(frozen=True)
class UserStateRead:
    """The user's state's reads queued on a caller's pipeline; picks their replies out of the pipeline's."""

    start: int

    def __call__(self, replies: Sequence[Any]) -> UserStateReplies:
        affinity, recent, legacy = replies[self.start : self.start + 3]
        return UserStateReplies(affinity, recent, legacy)


def user_state_queue(pipeline: redis.client.Pipeline, *, user_key: str, recent_depth: int) -> UserStateRead:
    """Queue the reads of the user's affinity hash and `recent_depth` latest items of interest."""
    start = len(pipeline)
    pipeline.hgetall(redis_keys.user_affinity(user_key))
    pipeline.lrange(redis_keys.user_recent_items(user_key), 0, recent_depth - 1)
    pipeline.get(redis_keys.user_recent_last(user_key))  # the layout before "#r"
    return UserStateRead(start)


@dataclass(frozen=True)
class ItemCountersRead:
    """The items' counters' reads queued on a caller's pipeline; picks their replies out of the pipeline's: per
    partition the items' packed counters, then their packed clicks and impressions in the placement."""

    start: int
    count: int

    def __call__(self, replies: Sequence[Any]) -> list[Any]:
        return list(replies[self.start : self.start + self.count])


def item_counters_queue(pipeline: redis.client.Pipeline, *, item_ids: list[str], placement: str) -> ItemCountersRead:
    """Queue the reads of the items' counters (popularity windows) and click-through counters in the placement, in
    every partition (`graph_app/state/packed_add.lua` writes them)."""
    start = len(pipeline)
    for partition in redis_keys.partitions():
        pipeline.hmget(redis_keys.item_counters(partition), item_ids)
        pipeline.hmget(redis_keys.placement_counters(partition, placement), item_ids)
    return ItemCountersRead(start, 2 * len(redis_keys.partitions()))
