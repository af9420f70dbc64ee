"""Live shelf updates: after a user's events, every open WebSocket of that user gets a fresh slate."""

from __future__ import annotations

import hashlib
import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)


def shelf_group_name(user_key: str) -> str:
    # Group names allow only ASCII letters, digits, '-', '_' and '.', up to 100 characters.
    return "shelf." + hashlib.sha1(user_key.encode()).hexdigest()


def shelves_notify(*, user_keys: set[str]) -> None:
    if not user_keys:
        return
    channel_layer = get_channel_layer()
    if channel_layer is None:
        return

    async def send_all() -> None:
        for user_key in user_keys:
            await channel_layer.group_send(shelf_group_name(user_key), {"type": "shelf.refresh"})

    try:
        async_to_sync(send_all)()
    except Exception as error:  # a live update is best effort: the event itself is already stored
        logger.warning("surface.shelf_notify_failed", extra={"error": str(error)})
