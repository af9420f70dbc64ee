"""A session's online state merged into its user's when the storefront identifies it (`signals_app.identity`
keeps the link; this writes the state it moves)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

import orjson
from django.conf import settings
from redis import Redis

from graph_app.features.definitions import AFFINITY_HALF_LIFE_SECONDS
from graph_app.features.user_affinity import UserAffinity, affinity_decode
from graph_app.state.assignment_unit import ASSIGNMENT_UNIT_TTL_SECONDS, assignment_unit_decode
from graph_app.state.ingest import (
    COOLDOWN_ITEMS_KEPT,
    COOLDOWN_KEPT_SECONDS,
    RECENT_ITEMS_KEPT,
    RECENT_ITEMS_TTL_SECONDS,
    affinity_merge_script,
)
from personalization import redis_keys
from personalization.redis_client import delete_queue, get_redis


@dataclass(frozen=True)
class SessionMerge:
    items: int  # the session's recent items moved
    entities: int  # the session's affinity entities added


def session_state_merge(*, user_id: str, session_id: str, linked_at: datetime) -> SessionMerge:
    """The session's online state (recent items, affinities, cool-down) added into the user's and the session's
    removed, the session's experiment assignment unit (when it was served in one) inherited unless the user has
    one, and the link appended to the partition's stream for the durable log: two round trips."""
    redis = get_redis()
    session_key = f"session:{session_id}"
    read = redis.pipeline(transaction=False)
    read.lrange(redis_keys.user_recent_items(session_key), 0, -1)
    read.hgetall(redis_keys.user_affinity(session_key))
    read.get(redis_keys.user_recent_last(session_key))  # the layout before "#r"
    read.zrange(redis_keys.user_cooldown(session_key), 0, -1, withscores=True)
    read.get(redis_keys.user_assignment_unit(session_key))
    session_items, session_affinity_raw, session_recent_last, session_cooldown, session_unit = read.execute()

    write = redis.pipeline(transaction=False)
    recent_key = redis_keys.user_recent_items(user_id)
    for item in reversed(session_items):  # oldest first, so the newest ends up in front
        write.lrem(recent_key, 0, item)
        write.lpush(recent_key, item)
    if session_items:
        write.ltrim(recent_key, 0, RECENT_ITEMS_KEPT - 1)
        write.expire(recent_key, RECENT_ITEMS_TTL_SECONDS)
    session_affinity = affinity_decode(session_affinity_raw)
    if session_affinity.recent_last is None and session_recent_last is not None:
        session_affinity = replace(session_affinity, recent_last=float(session_recent_last))
    if session_cooldown:
        # What the shopper hid or skipped before signing in stays cooled down (the later time of the two wins).
        cooldown_key = redis_keys.user_cooldown(user_id)
        write.zadd(cooldown_key, dict(session_cooldown), gt=True)
        write.zremrangebyrank(cooldown_key, 0, -COOLDOWN_ITEMS_KEPT - 1)
        write.expire(cooldown_key, COOLDOWN_KEPT_SECONDS)
    merged_entities = _affinity_merge(redis, user_id=user_id, session=session_affinity)
    if session_unit:
        # The session's variants hold after sign-in; a user already served in an experiment keeps theirs (NX). A
        # session never served in one has no variant to keep: the user's own unit stays free for a later session.
        unit = assignment_unit_decode(session_unit, user_key=session_key)
        write.set(redis_keys.user_assignment_unit(user_id), unit, nx=True, ex=ASSIGNMENT_UNIT_TTL_SECONDS)
    delete_queue(
        write,
        redis_keys.user_recent_items(session_key),
        redis_keys.user_affinity(session_key),
        redis_keys.user_recent_last(session_key),
        redis_keys.user_cooldown(session_key),
    )
    write.xadd(
        redis_keys.event_stream(redis_keys.partition_of(user_id)),
        {
            "e": orjson.dumps(
                {
                    "kind": "identify",
                    "user_id": user_id,
                    "session_id": session_id,
                    "linked_at": linked_at.isoformat(),
                }
            )
        },
    )
    write.execute()
    return SessionMerge(items=len(session_items), entities=merged_entities)


def _affinity_merge(redis: Redis, *, user_id: str, session: UserAffinity) -> int:
    """The session's affinities, and the time of its latest item of interest (when the feature store last saw the
    state updated: it treats state without one as older than its TTL), added into the user's hash (atomically on
    it: an event of the user meanwhile keeps its share); how many entities the session had."""
    if session.epoch is None and session.last is None and session.recent_last is None:
        return 0
    entity = affinity_merge_script.record("ENTITY")
    entities: list[str] = []
    for name, counter in session.counters.items():
        seen = session.category_times.get(name)
        entities += entity.values(key=name, counter=repr(counter), seen="" if seen is None else repr(seen))
    merged = affinity_merge_script.call_named(
        redis,
        affinity=redis_keys.user_affinity(user_id),
        recent_last=redis_keys.user_recent_last(user_id),
        entities_kept=settings.SIGNALS_AFFINITY_ENTITIES_KEPT,
        half_life=AFFINITY_HALF_LIFE_SECONDS,
        session_epoch=repr(session.epoch) if session.epoch is not None else "",
        session_last=repr(session.last) if session.last is not None else "",
        ttl=RECENT_ITEMS_TTL_SECONDS,
        session_recent_last=repr(session.recent_last) if session.recent_last is not None else "",
        entities=entities,
    )
    return int(merged)
