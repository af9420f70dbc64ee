"""The online state of events the durable log stored but the ingest script did not apply (control plane): late
events (older than the dedupe window when they arrived; the consumer applies them after each committed batch) and
imported history (the importer, after each committed batch).

The log decides, once: only the events `event_log_append` answered it stored as new are applied, by the apply
script (`graph_app.state.ingest.apply_script`), without the stream and without the seen-key dedupe.

At most once: the apply runs after the log's commit. A consumer that dies in between (or a Redis error in the apply)
leaves its entries pending; redelivered, the log answers "already stored", so those events are not applied: never
counted twice, missing online until `manage.py rebuild_online_state`. Applying before the commit would count
them twice whenever the commit failed after the apply (a crash, or a timeout on a script that did run).

Recent items stay in event-time order: a late item goes behind the items the log says are newer. The log knows
the time of every item in a user's recent items that an event already stored put there; an item it knows no time
for was put there by an event that arrived after the late one, so it is newer (an event that arrives live is at
most the dedupe window old, and the late one was older than that when it arrived).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

import redis
from django.db import connection

from graph_app.state.event_types import BUILT_IN_EVENT_TYPES, EventType, event_type_lookup
from graph_app.state.ingest import COOLDOWN_EVENT_TYPES, DEDUPE_WINDOW, LoggedEvent, apply_script
from graph_app.state.models import CustomEventType
from graph_app.state.records import EventInput, EventRecord
from personalization import redis_keys
from personalization.redis_client import get_control_redis

logger = logging.getLogger(__name__)

# The latest time of each (user, item) among the log's interest events, leaving out the events being applied.
_KNOWN_TIMES_SQL = """
SELECT r.user_id, r.item_id, extract(epoch FROM max(e.occurred_at))::float8
FROM unnest(%(users)s::text[], %(items)s::text[]) AS r(user_id, item_id)
JOIN signals_app_event e ON e.user_id = r.user_id AND e.item_id = r.item_id
WHERE e.type = ANY(%(types)s) AND e.event_id <> ALL(%(applying)s::text[])
GROUP BY r.user_id, r.item_id
"""


def event_is_late(*, occurred_at: datetime, received_at: datetime) -> bool:
    """Older than the dedupe window when it arrived: the ingest script left its online state to the log."""
    return occurred_at < received_at - DEDUPE_WINDOW


def interest_event_types() -> list[str]:
    """The names of the event types that put their item in the user's recent items, custom ones included."""
    custom = CustomEventType.objects.filter(marks_interest=True).order_by("name").values_list("name", flat=True)
    return sorted({name for name, kind in BUILT_IN_EVENT_TYPES.items() if kind.marks_interest} | set(custom))


def _touches_state(event: EventInput, kind: EventType) -> bool:
    return bool(event.item_id) and (
        kind.popularity_weight > 0
        or kind.marks_interest
        or event.type == "purchase"
        or event.type in COOLDOWN_EVENT_TYPES
        or (event.type == "click" and bool(event.placement))
    )


def events_apply_online(*, records: Sequence[EventRecord], dedupe_after: datetime | None = None) -> int:
    """Apply events the log has just stored as new to the online state; how many were applied.

    `dedupe_after` (the importer): an event that happened at or after it is within the dedupe window, so the
    ingest script may have applied it already (received live, not yet in the log): it is skipped if its event id
    was seen, and marked seen otherwise. Each user's events are applied in event-time order (ties as given)."""
    logged: list[LoggedEvent] = []
    for record in records:
        event = record.event
        kind = event_type_lookup(event.type)
        if kind is None or not _touches_state(event, kind):
            continue
        dedupe = dedupe_after is not None and event.occurred_at >= dedupe_after
        logged.append(LoggedEvent(event=event, event_type=kind, dedupe=dedupe))
    if not logged:
        return 0
    logged.sort(key=lambda item: (item.event.user_key, item.event.occurred_at))
    client = get_control_redis()
    outcomes = apply_script.run(client, logged, _known_times(client, logged))
    applied = sum(outcomes)
    logger.info("signals.history_applied", extra={"events": len(logged), "applied": applied})
    return applied


def _known_times(client: redis.Redis, logged: list[LoggedEvent]) -> dict[str, dict[str, float]]:
    """user key -> item -> the log's time of the items now in the user's recent items (users with an id: a
    session's items are all taken as newer)."""
    users = sorted({item.event.user_id for item in logged if item.event_type.marks_interest and item.event.user_id})
    if not users:
        return {}
    pipeline = client.pipeline(transaction=False)
    for user_id in users:
        pipeline.lrange(redis_keys.user_recent_items(user_id), 0, -1)
    pairs = [
        (user_id, item.decode()) for user_id, items in zip(users, pipeline.execute(), strict=True) for item in items
    ]
    if not pairs:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(
            _KNOWN_TIMES_SQL,
            {
                "users": [user_id for user_id, _ in pairs],
                "items": [item_id for _, item_id in pairs],
                "types": interest_event_types(),
                "applying": sorted({item.event.event_id for item in logged}),
            },
        )
        rows = cursor.fetchall()
    known: dict[str, dict[str, float]] = {}
    for user_id, item_id, occurred in rows:
        known.setdefault(user_id, {})[item_id] = float(occurred)
    return known
