"""Live shelf updates: tell the open WebSockets that their slate may have changed.

Three causes, three kinds of group (see `surface_app.consumers` for what a socket does with each message):
- a user's events: the user's group (`shelf.<hash>`); the socket re-serves and always sends;
- catalog changes (an item updated, deleted, created or back in stock): the group every socket joins
  (`shelves.all`), with the changed item ids; a socket re-serves when its shelf shows one of them, or may now show
  a new one, and sends only if the slate changed;
- rule, placement or cap changes: the placement's group (or, for every placement, `shelves.all`); the socket
  re-serves and sends only if the slate changed.

The channel layer is channels_redis's pub/sub layer, where a group send is one Redis PUBLISH to
"<prefix>__group__<group>" and every WebSocket process subscribes to the groups of its own sockets. Callers here
are synchronous (web workers, Celery, the admin), so instead of running an event loop (about 2 ms) they PUBLISH
the serialized message themselves. The ingest path queues its PUBLISH on the Redis pipeline it already sends: the
notification of a user's events costs no round trip.

Graph and Signal do not call this module: they publish on `personalization.live_updates`, to which `ready()`
subscribes the two `*_receive` functions below.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from typing import Any

import redis
from channels.layers import get_channel_layer
from django.conf import settings
from redis.exceptions import RedisError

from personalization import redis_keys
from personalization.cache import item_cache_invalidate
from personalization.live_updates import CatalogChanged, UsersChanged
from personalization.redis_client import get_control_redis, get_redis

logger = logging.getLogger(__name__)

SHELF_REFRESH = {"type": "shelf.refresh"}
# Every shelf socket joins this group: catalog changes and changes of every placement's rules are broadcast here.
SHELVES_ALL_GROUP = "shelves.all"
# The item-keyed cache (key, name) of `scoring_app.engine.retrieval` that lists the newest items.
FRESH_ITEMS_CACHE = ("catalog", "fresh_items")


def shelf_group_name(user_key: str) -> str:
    # Group names allow only ASCII letters, digits, '-', '_' and '.', up to 100 characters.
    return "shelf." + hashlib.sha1(user_key.encode()).hexdigest()


def shelves_placement_group_name(placement: str) -> str:
    return "shelves.placement." + hashlib.sha1(placement.encode()).hexdigest()


def _group_channel(group: str) -> str:
    # channels_redis.pubsub names a group's Redis channel this way (RedisPubSubChannelLayer._get_group_channel_name).
    return f"{settings.CHANNEL_LAYERS['default']['CONFIG']['prefix']}__group__{group}"


def _serialize(message: dict[str, Any]) -> bytes:
    layer = get_channel_layer()
    assert layer is not None
    return bytes(layer.serialize(message))


_refresh_payload: list[bytes] = []


def _payload() -> bytes:
    if not _refresh_payload:
        _refresh_payload.append(_serialize(SHELF_REFRESH))
    return _refresh_payload[0]


def shelves_refresh_queue(pipeline: redis.client.Pipeline, user_keys: Iterable[str]) -> None:
    """Queue a refresh of these users' shelves on a pipeline the caller executes."""
    payload = _payload()
    for user_key in sorted(set(user_keys)):
        # As a plain command: a Redis Cluster pipeline refuses its `publish` method; a PUBLISH on any node of a cluster
        # reaches the subscribers of every node.
        pipeline.execute_command("PUBLISH", _group_channel(shelf_group_name(user_key)), payload)  # type: ignore[no-untyped-call]


def shelves_notify(*, user_keys: set[str]) -> None:
    if user_keys:
        pipeline = get_redis().pipeline(transaction=False)
        shelves_refresh_queue(pipeline, user_keys)
        pipeline.execute()


def _publish(*, group: str, message: dict[str, Any], what: str) -> None:
    """Control-plane notifications run after a commit: the change is stored, so a Redis failure here is logged and
    the shelves catch up at the user's next event rather than the caller failing."""
    try:
        get_control_redis().publish(_group_channel(group), _serialize(message))
    except RedisError as error:
        logger.warning("surface.shelves_notify_failed", extra={"what": what, "error": str(error)})


def shelves_catalog_changed(*, changed: Iterable[str] = (), appeared: Iterable[str] = ()) -> None:
    """Items were updated or deleted (`changed`), or created or back in stock (`appeared`): every shelf showing one
    of them is served again, and every shelf that might now show an appeared one. Call after commit. Inside
    `personalization.live_updates.catalog_batch()` the publisher's changes arrive here once, when it ends."""
    changed, appeared = set(changed), set(appeared)
    if not (changed or appeared):
        return
    # Rules compile their item conditions into item sets: serving rebuilds its snapshot (no shelf is told to
    # re-serve for that: the catalog message below does it for the shelves concerned).
    try:
        get_control_redis().incr(redis_keys.SURFACE_CONFIG_VERSION)
    except RedisError as error:
        logger.warning("surface.config_version_failed", extra={"error": str(error)})
    if appeared:
        # Score's shared list of the newest items (stale-while-revalidate for a minute) must include them before
        # the shelves are served again: the first reader now rebuilds it.
        try:
            item_cache_invalidate(item_key=FRESH_ITEMS_CACHE[0], name=FRESH_ITEMS_CACHE[1])
        except RedisError as error:
            logger.warning("surface.shelves_notify_failed", extra={"what": "fresh_items", "error": str(error)})
    message = {"type": "shelf.catalog", "changed": sorted(changed - appeared), "appeared": sorted(appeared)}
    _publish(group=SHELVES_ALL_GROUP, message=message, what="catalog")


def users_changed_receive(message: UsersChanged) -> None:
    """Graph and Signal publish users' changes (`personalization.live_updates`); subscribed in `ready()`."""
    if message.pipeline is not None:
        shelves_refresh_queue(message.pipeline, message.user_keys)
    else:
        shelves_notify(user_keys=set(message.user_keys))


def catalog_changed_receive(message: CatalogChanged) -> None:
    shelves_catalog_changed(changed=message.changed, appeared=message.appeared)


def shelves_placement_changed(*, placement: str | None, version: bytes | None = None) -> None:
    """A placement's rules, caps or settings changed (None: those of every placement): its shelves are served again
    and sent where the slate changed. Call after commit and after bumping the configuration version: the message
    carries it (`version`: the bump's reply, else read), and each WebSocket process serves them once its rules
    snapshot has caught up with it."""
    group = SHELVES_ALL_GROUP if placement is None else shelves_placement_group_name(placement)
    if version is None:
        try:
            version = get_control_redis().get(redis_keys.SURFACE_CONFIG_VERSION) or b"0"
        except RedisError as error:
            logger.warning("surface.shelves_notify_failed", extra={"what": "placement", "error": str(error)})
            return
    _publish(group=group, message={"type": "shelf.placement", "version": version}, what="placement")
