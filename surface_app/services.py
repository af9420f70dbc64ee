"""Live shelf updates: after a user's events, every open WebSocket of that user gets a fresh slate.

The channel layer is channels_redis's pub/sub layer, where a group send is one Redis PUBLISH to
"<prefix>__group__<group>" and every WebSocket process subscribes to the groups of its own sockets. The web
workers are synchronous, so instead of running an event loop per request (about 2 ms) they queue those PUBLISH
commands on the Redis pipeline the request already sends (the ingest's): the notification costs no round trip.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import redis
from channels.layers import get_channel_layer
from django.conf import settings

from personalization.redis_client import get_redis

SHELF_REFRESH = {"type": "shelf.refresh"}


def shelf_group_name(user_key: str) -> str:
    # Group names allow only ASCII letters, digits, '-', '_' and '.', up to 100 characters.
    return "shelf." + hashlib.sha1(user_key.encode()).hexdigest()


def _group_channel(group: str) -> str:
    # channels_redis.pubsub names a group's Redis channel this way (RedisPubSubChannelLayer._get_group_channel_name).
    return f"{settings.CHANNEL_LAYERS['default']['CONFIG']['prefix']}__group__{group}"


_refresh_payload: list[bytes] = []


def _payload() -> bytes:
    if not _refresh_payload:
        layer = get_channel_layer()
        assert layer is not None
        _refresh_payload.append(layer.serialize(SHELF_REFRESH))
    return _refresh_payload[0]


def shelves_refresh_queue(pipeline: redis.client.Pipeline, user_keys: Iterable[str]) -> None:
    """Queue a refresh of these users' shelves on a pipeline the caller executes."""
    payload = _payload()
    for user_key in sorted(set(user_keys)):
        pipeline.publish(_group_channel(shelf_group_name(user_key)), payload)


def shelves_notify(*, user_keys: set[str]) -> None:
    if user_keys:
        pipeline = get_redis().pipeline(transaction=False)
        shelves_refresh_queue(pipeline, user_keys)
        pipeline.execute()
