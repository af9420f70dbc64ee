"""Event types: the built-in ones and the custom ones staff register in the admin.

Custom types reach the ingest processes through Redis (published on save), kept in process for a few seconds,
so validating an event never touches PostgreSQL.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass

from redis.exceptions import RedisError

from personalization import redis_keys
from personalization.process_caches import process_cache
from personalization.redis_client import get_control_redis, get_redis

logger = logging.getLogger(__name__)

CUSTOM_TYPES_REFRESH_SECONDS = 5.0


@dataclass(frozen=True)
class EventType:
    name: str
    needs_item: bool
    # Weight in item popularity and user affinities; 0 leaves them alone.
    popularity_weight: float
    # Whether the item joins the user's recent items (what the shelf is personalised from).
    marks_interest: bool


BUILT_IN_EVENT_TYPES: dict[str, EventType] = {
    event_type.name: event_type
    for event_type in (
        EventType("view", needs_item=True, popularity_weight=1.0, marks_interest=True),
        EventType("click", needs_item=True, popularity_weight=2.0, marks_interest=True),
        EventType("dwell", needs_item=True, popularity_weight=1.0, marks_interest=True),
        EventType("add_to_cart", needs_item=True, popularity_weight=4.0, marks_interest=True),
        EventType("remove_from_cart", needs_item=True, popularity_weight=0.0, marks_interest=False),
        EventType("purchase", needs_item=True, popularity_weight=8.0, marks_interest=True),
        EventType("save", needs_item=True, popularity_weight=3.0, marks_interest=True),
        EventType("skip", needs_item=True, popularity_weight=0.0, marks_interest=False),
        EventType("hide", needs_item=True, popularity_weight=0.0, marks_interest=False),
        EventType("share", needs_item=True, popularity_weight=3.0, marks_interest=True),
        EventType("search", needs_item=False, popularity_weight=0.0, marks_interest=False),
        # Anything a storefront sends that has no type of its own (e.g. an unknown Segment event name).
        EventType("custom", needs_item=False, popularity_weight=0.0, marks_interest=False),
    )
}

_custom_snapshot: dict[str, EventType] = {}
_custom_loaded_at = float("-inf")


def custom_event_types_publish(event_types: list[EventType]) -> None:
    """Called after staff change custom types: every ingest process sees them within a few seconds."""
    client = get_control_redis()  # staff's change, not a request's: the control plane's timeouts
    client.set(redis_keys.CUSTOM_EVENT_TYPES, json.dumps([asdict(event_type) for event_type in event_types]))
    custom_event_types_forget()


@process_cache("graph.custom_event_types")
def custom_event_types_forget() -> None:
    """Read the custom event types afresh on the next event (after staff changed them, and between tests)."""
    global _custom_loaded_at
    _custom_loaded_at = float("-inf")


def _custom_event_types() -> dict[str, EventType]:
    global _custom_snapshot, _custom_loaded_at
    now = time.monotonic()
    if now - _custom_loaded_at < CUSTOM_TYPES_REFRESH_SECONDS:
        return _custom_snapshot
    try:
        payload = get_redis().get(redis_keys.CUSTOM_EVENT_TYPES)
        _custom_snapshot = {row["name"]: EventType(**row) for row in json.loads(payload)} if payload else {}
    except (RedisError, ValueError, TypeError) as error:
        logger.warning("signals.custom_types_unavailable", extra={"error": str(error)})
    _custom_loaded_at = now
    return _custom_snapshot


def event_type_lookup(name: str) -> EventType | None:
    return BUILT_IN_EVENT_TYPES.get(name) or _custom_event_types().get(name)
