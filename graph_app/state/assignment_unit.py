"""The shopper's assignment unit: what experiments hash to choose their variant (`surface_app.serving.experiments`).

It defaults to the request's user key (a user id, or `session:<id>` for an anonymous session). A slate served in
an experiment keeps it (SET NX, in the round trip that logs the slate); when a session is identified, the user
inherits the session's unit (SET NX, `graph_app.state.identity`): an anonymous shopper keeps their variant after
signing in, while a user already served keeps theirs. One key per shopper, in the shopper's partition: never a
command across two shoppers' keys (they may live in different Cluster slots).
"""

from __future__ import annotations

import redis

from personalization import redis_keys

# Longer than any experiment runs; refreshed each time the shopper is served in one.
ASSIGNMENT_UNIT_TTL_SECONDS = 180 * 24 * 3600


def assignment_unit_queue(pipeline: redis.client.Pipeline, *, user_key: str) -> None:
    """Queue the read of the shopper's stored unit (one reply: `assignment_unit_decode`)."""
    pipeline.get(redis_keys.user_assignment_unit(user_key))


def assignment_unit_decode(reply: bytes | None, *, user_key: str) -> str:
    """The unit the shopper is assigned by: the stored one, else their user key."""
    return reply.decode() if reply else user_key


def assignment_unit_keep_queue(pipeline: redis.client.Pipeline, *, user_key: str, unit: str) -> None:
    """Queue keeping the unit the shopper was served by (a unit already stored wins), its TTL refreshed."""
    key = redis_keys.user_assignment_unit(user_key)
    pipeline.set(key, unit, nx=True, ex=ASSIGNMENT_UNIT_TTL_SECONDS)
    pipeline.expire(key, ASSIGNMENT_UNIT_TTL_SECONDS)
