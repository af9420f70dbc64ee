"""Identity: an anonymous session joins a user's history when the storefront identifies it.

The link is kept in Redis (where the ingest path resolves later session-only events), the session's online
state is merged into the user's, and the link is appended to the event stream so the durable log records it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from graph_app.features.definitions import AFFINITY_HALF_LIFE_SECONDS
from personalization import redis_keys
from personalization.redis_client import get_redis
from signals_app.online_state import (
    COOLDOWN_ITEMS_KEPT,
    COOLDOWN_KEPT_SECONDS,
    RECENT_ITEMS_KEPT,
    RECENT_ITEMS_TTL_SECONDS,
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
    read.hgetall(redis_keys.user_affinity(user_id))
    read.get(redis_keys.user_recent_last(session_key))
    read.get(redis_keys.user_recent_last(user_id))
    read.zrange(redis_keys.user_cooldown(session_key), 0, -1, withscores=True)
    session_items, session_affinity, user_affinity, session_recent_last, user_recent_last, session_cooldown = (
        read.execute()
    )
    user_epoch_raw = user_affinity.get(b"_epoch")

    now = datetime.now(UTC).timestamp()
    write = redis.pipeline(transaction=False)
    recent_key = redis_keys.user_recent_items(user_id)
    for item in reversed(session_items):  # oldest first, so the newest ends up in front
        write.lrem(recent_key, 0, item)
        write.lpush(recent_key, item)
    if session_items:
        write.ltrim(recent_key, 0, RECENT_ITEMS_KEPT - 1)
        write.expire(recent_key, RECENT_ITEMS_TTL_SECONDS)
    # When the state was last updated (the feature store treats state without it as older than its TTL): the later
    # of the user's and the session's.
    if session_recent_last is not None and (
        user_recent_last is None or float(session_recent_last) > float(user_recent_last)
    ):
        write.set(redis_keys.user_recent_last(user_id), session_recent_last, ex=RECENT_ITEMS_TTL_SECONDS)

    affinity_key = redis_keys.user_affinity(user_id)
    merged_entities = 0
    session_epoch = float(session_affinity.get(b"_epoch", now))
    user_epoch = float(user_epoch_raw) if user_epoch_raw else session_epoch
    if not user_epoch_raw and session_affinity:
        write.hset(affinity_key, "_epoch", repr(user_epoch))
    for name, value in session_affinity.items():
        field = name.decode()
        if field.startswith("f:"):
            # Same forward-decayed quantity, re-expressed against the user's epoch.
            write.hincrbyfloat(
                affinity_key, field, float(value) * 2 ** ((session_epoch - user_epoch) / AFFINITY_HALF_LIFE_SECONDS)
            )
            merged_entities += 1
        elif field.startswith("r:") and float(value) > float(user_affinity.get(name, 0)):
            write.hset(affinity_key, field, value)  # the later of the two last-seen times
    session_last, user_last = session_affinity.get(b"_last"), user_affinity.get(b"_last")
    if session_last is not None and (user_last is None or float(session_last) > float(user_last)):
        write.hset(affinity_key, "_last", session_last)
    if session_affinity:
        write.expire(affinity_key, RECENT_ITEMS_TTL_SECONDS)
    if session_cooldown:
        # What the shopper hid or skipped before signing in stays cooled down (the later time of the two wins).
        cooldown_key = redis_keys.user_cooldown(user_id)
        write.zadd(cooldown_key, dict(session_cooldown), gt=True)
        write.zremrangebyrank(cooldown_key, 0, -COOLDOWN_ITEMS_KEPT - 1)
        write.expire(cooldown_key, COOLDOWN_KEPT_SECONDS)
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
