"""Erasure of a shopper's Surface state (control plane): its frequency caps, its last slates and the slates kept
for attribution (`operations.erasure` orchestrates)."""

from __future__ import annotations

from collections.abc import Iterable

from personalization import redis_keys
from personalization.redis_client import get_control_redis
from surface_app.models import Placement
from surface_app.serving.slates import last_slates_forget

SLATES_DELETE_BATCH = 1000


def shopper_surface_keys(*, user_key: str, placements: Iterable[str]) -> list[str]:
    """The user's Surface keys (in its partition): caps, and its last slate in every placement it may have been
    served (the configured ones and those its impressions name)."""
    names = set(Placement.objects.values_list("name", flat=True)) | set(placements)
    return [
        redis_keys.user_cap_counts(user_key),
        redis_keys.user_cap_touched(user_key),
        redis_keys.user_cap_blocks(user_key),
        *(redis_keys.user_last_slate(user_key, name) for name in sorted(names)),
    ]


def slates_forget(*, request_ids: Iterable[str], user_keys: set[str]) -> int:
    """Drop the served slates kept for attribution (each in its own slot: one DEL a key), and the users' last slates
    this process remembers; the number dropped from Redis."""
    last_slates_forget(user_keys=user_keys)
    keys = [redis_keys.slate(request_id) for request_id in sorted(request_ids)]
    pipeline = get_control_redis().pipeline(transaction=False)
    for key in keys:
        pipeline.delete(key)
    return sum(int(deleted) for deleted in pipeline.execute()) if keys else 0
