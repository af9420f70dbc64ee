"""A shopper's online state erased (control plane; `signals_app.erasure` orders the steps): its keys in Redis, its
entries still in the event stream, and the tombstone the stream consumer honours, atomically per user key."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import redis

from personalization import redis_keys
from personalization.redis_client import ShaScript

online_erase_script = ShaScript.from_files(__file__, "online_erase.lua")


def user_state_keys(*, user_key: str, session_ids: Iterable[str]) -> list[str]:
    """The keys of a user key's online state (all in its partition), its session items of these sessions included.
    Not the dedupe's sets: they hold 64-bit hashes of event ids, nothing that names the shopper, for at most 3 days,
    and keep a resend of an erased event (after the tombstone's boundary) from starting its history again."""
    return [
        redis_keys.user_recent_items(user_key),
        redis_keys.user_recent_last(user_key),
        redis_keys.user_affinity(user_key),
        redis_keys.user_purchased(user_key),
        redis_keys.user_cooldown(user_key),
        redis_keys.user_assignment_unit(user_key),
        *(redis_keys.user_session_items(user_key, session) for session in session_ids),
    ]


def user_state_erase(
    *,
    client: redis.Redis,
    user_key: str,
    keys: Sequence[str],
    stream_entries: Sequence[str | bytes],
    tombstone: str,
    tombstone_ttl: int,
) -> tuple[int, int]:
    """In the user key's partition, atomically: `tombstone` set to the stream's last entry, `keys` deleted (every
    owner's), its `stream_entries` and its field in the partition's user nearest lists removed. (keys and fields
    deleted, stream entries deleted)."""
    partition = redis_keys.partition_of(user_key)
    reply = online_erase_script.call_named(
        client,
        stream=redis_keys.event_stream(partition),
        tombstone=tombstone,
        nearest_lists=redis_keys.user_nearest_lists(partition),
        erased=list(keys),
        tombstone_ttl=tombstone_ttl,
        user_key=user_key,
        entries=list(stream_entries),
    )
    return int(reply[0]) + int(reply[2]), int(reply[1])
