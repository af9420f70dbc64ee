"""Identity: an anonymous session joins a user's history when the storefront identifies it.

The link is kept in Redis (where the ingest path resolves later session-only events), the session's online
state is merged into the user's, and the link is appended to the event stream so the durable log records it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import orjson
from django.conf import settings
from redis import Redis

from graph_app.features.definitions import AFFINITY_HALF_LIFE_SECONDS
from graph_app.features.user_affinity import UserAffinity, affinity_decode
from personalization import redis_keys
from personalization.redis_client import get_redis
from signals_app.online_state import (
    COOLDOWN_ITEMS_KEPT,
    COOLDOWN_KEPT_SECONDS,
    RECENT_ITEMS_KEPT,
    RECENT_ITEMS_TTL_SECONDS,
    affinity_merge_script,
)

logger = logging.getLogger(__name__)

SESSION_ALIAS_TTL_SECONDS = 90 * 24 * 3600


@dataclass(frozen=True)
class IdentityLinkResult:
    user_id: str
    session_id: str
    merged_items: int
    merged_entities: int


def identity_link(*, user_id: str, session_id: str) -> IdentityLinkResult:
    get_redis().set(redis_keys.session_alias(session_id), user_id, ex=SESSION_ALIAS_TTL_SECONDS)
    return _merge_and_log(user_id=user_id, session_id=session_id)


def identity_link_if_new(*, user_id: str, session_id: str) -> IdentityLinkResult | None:
    """Link on the first event that carries both ids; later ones find the link already there."""
    if not get_redis().set(redis_keys.session_alias(session_id), user_id, ex=SESSION_ALIAS_TTL_SECONDS, nx=True):
        return None
    return _merge_and_log(user_id=user_id, session_id=session_id)


def _merge_and_log(*, user_id: str, session_id: str) -> IdentityLinkResult:
    redis = get_redis()
    session_key = f"session:{session_id}"
    read = redis.pipeline(transaction=False)
    read.lrange(redis_keys.user_recent_items(session_key), 0, -1)
    read.hgetall(redis_keys.user_affinity(session_key))
    read.get(redis_keys.user_recent_last(session_key))  # the layout before "#r"
    read.zrange(redis_keys.user_cooldown(session_key), 0, -1, withscores=True)
    session_items, session_affinity_raw, session_recent_last, session_cooldown = read.execute()

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
    write.delete(
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
                    "linked_at": datetime.now(UTC).isoformat(),
                }
            )
        },
    )
    write.execute()
    logger.info("signals.identity_linked", extra={"user_id": user_id, "session_id": session_id})
    return IdentityLinkResult(user_id, session_id, len(session_items), merged_entities)


def _affinity_merge(redis: Redis, *, user_id: str, session: UserAffinity) -> int:
    """The session's affinities, and the time of its latest item of interest (when the feature store last saw the
    state updated: it treats state without one as older than its TTL), added into the user's hash (atomically on
    it: an event of the user meanwhile keeps its share); how many entities the session had."""
    if session.epoch is None and session.last is None and session.recent_last is None:
        return 0
    args: list[str | int | float | bytes] = [
        settings.SIGNALS_AFFINITY_ENTITIES_KEPT,
        AFFINITY_HALF_LIFE_SECONDS,
        repr(session.epoch) if session.epoch is not None else "",
        repr(session.last) if session.last is not None else "",
        RECENT_ITEMS_TTL_SECONDS,
        repr(session.recent_last) if session.recent_last is not None else "",
    ]
    for name, counter in session.counters.items():
        seen = session.category_times.get(name)
        args += [name, repr(counter), "" if seen is None else repr(seen)]
    keys = [redis_keys.user_affinity(user_id), redis_keys.user_recent_last(user_id)]
    return int(affinity_merge_script.call(redis, keys, args))
