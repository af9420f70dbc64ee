"""Recomputing the online state from the PostgreSQL log (control plane): `manage.py rebuild_online_state` (Signal's
command, which hands in its identity links), after restoring the log or losing Redis.

Users: each user's recent items and their time, affinity hash, purchased set and cool-down set, from their
events in event-time order (then by row id) with the ingest script's rules (`state.lua`) and the catalog's
entity keys: the state ingesting the same events live would have built. An anonymous session's events count for
the user it was identified as (the caller's `sessions_to_users`), as its state was merged into theirs; session
items (30 minutes) are not rebuilt. Recent items or affinities that ended longer than their TTL ago are not written
(readers take them as missing). Items: `graph_app.state.counters.item_counters_rebuild`.

Run it while ingest is paused: a user's keys are replaced with what the log held when they were read.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import cast

import redis
from django.conf import settings
from django.db import connection, transaction
from redis.typing import EncodableT

from graph_app.features.definitions import AFFINITY_HALF_LIFE_SECONDS
from graph_app.features.offline import catalog_entity_keys
from graph_app.features.user_affinity import (
    AFFINITY_REBASE_AFTER_HALF_LIVES,
    affinity_encode,
    as_float32,
    entities_kept,
    weakest_dropped,
)
from graph_app.progress import PROGRESS_EVERY_SECONDS, Progress
from graph_app.state.counters import item_counters_rebuild
from graph_app.state.custom_types import event_types
from graph_app.state.event_types import EventType
from graph_app.state.ingest import (
    COOLDOWN_EVENT_TYPES,
    COOLDOWN_ITEMS_KEPT,
    COOLDOWN_KEPT_SECONDS,
    RECENT_ITEMS_KEPT,
    RECENT_ITEMS_TTL_SECONDS,
)
from personalization import redis_keys
from personalization.redis_client import delete_queue, get_control_redis

logger = logging.getLogger(__name__)

FETCH_ROWS = 10_000
IDENTITY_LINKS_COPY_ROWS = 10_000  # links held at once while they are copied in (a shop may have millions)
WRITE_USERS = 500
# How often the rebuild logs how far it is and the time left (a year of a big shop's log takes an hour).
REBUILD_PROGRESS_SECONDS = PROGRESS_EVERY_SECONDS
MIN_EXPIRY_SECONDS = 86400  # as the ingest script: Redis keeps user state a day at the least

# The caller's identity links, for the join below: a temporary table of this transaction (dropped first when an
# enclosing transaction, as a test's, still holds one from an earlier call).
_LINKS_TABLE_DROP_SQL = "DROP TABLE IF EXISTS pg_temp.rebuild_identity_links"
_LINKS_TABLE_SQL = """
CREATE TEMPORARY TABLE rebuild_identity_links (session_id text PRIMARY KEY, user_id text NOT NULL) ON COMMIT DROP
"""
_LINKS_COPY_SQL = "COPY rebuild_identity_links (session_id, user_id) FROM STDIN"
_USER_EVENTS_SQL = """
SELECT coalesce(nullif(e.user_id, ''), l.user_id, 'session:' || e.session_id) AS user_key,
       e.item_id, e.type, extract(epoch FROM e.occurred_at)::float8
FROM signals_app_event e
LEFT JOIN rebuild_identity_links l ON e.user_id = '' AND l.session_id = e.session_id
WHERE e.item_id <> '' AND e.type = ANY(%(types)s::text[])
ORDER BY 1, e.occurred_at, e.id
"""
_USER_EVENTS_COUNT_SQL = """
SELECT count(*) FROM signals_app_event e WHERE e.item_id <> '' AND e.type = ANY(%(types)s::text[])
"""


@dataclass(frozen=True)
class OnlineStateRebuildReport:
    users: int = 0
    items: int = 0
    placement_items: int = 0


@dataclass
class UserState:
    """One user's online state, replayed event by event as the ingest script applies them."""

    recent: list[str] = field(default_factory=list)  # newest first
    recent_last: float | None = None
    frequency: dict[str, float] = field(default_factory=dict)  # entity counters, against `epoch`
    last_seen: dict[str, float] = field(default_factory=dict)  # entity times (the categories' are kept)
    affinity_last: float | None = None
    epoch: float | None = None
    purchased: dict[str, float] = field(default_factory=dict)
    cooldown: dict[str, float] = field(default_factory=dict)

    def add(self, *, item: str, type_name: str, kind: EventType, ts: float, entities: str) -> None:
        if type_name in COOLDOWN_EVENT_TYPES:
            self.cooldown[item] = max(self.cooldown.get(item, ts), ts)
        if type_name == "purchase":
            self.purchased[item] = max(self.purchased.get(item, ts), ts)
        if kind.marks_interest:
            self._recent_push(item, ts)
        if kind.popularity_weight > 0 and entities:
            self._affinity_add(entities, kind.popularity_weight, ts)

    def _recent_push(self, item: str, ts: float) -> None:
        if self.recent_last is not None and ts - self.recent_last > RECENT_ITEMS_TTL_SECONDS:
            self.recent = []
        if self.recent_last is None or ts > self.recent_last:
            self.recent_last = ts
        if item in self.recent:
            self.recent.remove(item)
        self.recent.insert(0, item)
        del self.recent[RECENT_ITEMS_KEPT:]

    def _affinity_add(self, entities: str, weight: float, ts: float) -> None:
        if self.affinity_last is not None and ts - self.affinity_last > RECENT_ITEMS_TTL_SECONDS:
            self.frequency, self.last_seen, self.affinity_last, self.epoch = {}, {}, None, None
        if self.epoch is None:
            self.epoch = ts
        elif (ts - self.epoch) / AFFINITY_HALF_LIFE_SECONDS > AFFINITY_REBASE_AFTER_HALF_LIVES:
            factor = 2 ** (-(ts - self.epoch) / AFFINITY_HALF_LIFE_SECONDS)
            self.frequency = {key: as_float32(value * factor) for key, value in self.frequency.items()}
            self.epoch = ts
        increment = weight * 2 ** ((ts - self.epoch) / AFFINITY_HALF_LIFE_SECONDS)
        updated: dict[str, float] = {}
        for entity in (key for key in entities.split("|") if key):
            updated[entity] = updated.get(entity, self.frequency.get(entity, 0.0)) + increment
            if ts > self.last_seen.get(entity, 0.0):
                self.last_seen[entity] = ts
        # Stored as floats, rounded once an event as the scripts round them.
        self.frequency.update({entity: as_float32(value) for entity, value in updated.items()})
        if self.affinity_last is None or ts > self.affinity_last:
            self.affinity_last = ts
        for dropped in weakest_dropped(self.frequency, entities_kept()):
            self.last_seen.pop(dropped, None)

    def queue_write(self, pipeline: redis.client.Pipeline, user_key: str, now: float) -> None:
        """Replace the user's keys with this state (one user's keys share a slot)."""
        recent, recent_last = redis_keys.user_recent_items(user_key), redis_keys.user_recent_last(user_key)
        affinity, purchased = redis_keys.user_affinity(user_key), redis_keys.user_purchased(user_key)
        cooldown = redis_keys.user_cooldown(user_key)
        # recent_last: the layout before "#r".
        delete_queue(pipeline, recent, recent_last, affinity, purchased, cooldown)
        recent_valid = self.recent_last is not None and self.recent_last + RECENT_ITEMS_TTL_SECONDS > now
        affinity_valid = (
            self.frequency
            and self.epoch is not None
            and self.affinity_last is not None
            and self.affinity_last + RECENT_ITEMS_TTL_SECONDS > now
        )
        if self.recent and recent_valid:
            assert self.recent_last is not None
            pipeline.rpush(recent, *self.recent)
            pipeline.expireat(recent, _expire_at(self.recent_last, now))
        if affinity_valid or (self.recent and recent_valid):
            encoded = affinity_encode(
                epoch=self.epoch if affinity_valid else None,
                last=self.affinity_last if affinity_valid else None,
                counters=self.frequency if affinity_valid else {},
                times=self.last_seen,
                recent_last=self.recent_last if self.recent and recent_valid else None,
            )
            pipeline.hset(affinity, mapping=cast("dict[EncodableT, EncodableT]", encoded))
            latest = max(self.affinity_last or 0.0, self.recent_last or 0.0)
            pipeline.expireat(affinity, _expire_at(latest, now))
        bought = _latest(self.purchased, settings.SIGNALS_PURCHASED_ITEMS_KEPT)
        if bought:
            pipeline.zadd(purchased, bought)
            pipeline.expire(purchased, RECENT_ITEMS_TTL_SECONDS)
        cooling = _latest(
            {item: ts for item, ts in self.cooldown.items() if ts > now - COOLDOWN_KEPT_SECONDS}, COOLDOWN_ITEMS_KEPT
        )
        if cooling:
            pipeline.zadd(cooldown, cooling)
            pipeline.expire(cooldown, COOLDOWN_KEPT_SECONDS)


def _expire_at(last: float, now: float) -> int:
    return math.floor(max(last + RECENT_ITEMS_TTL_SECONDS, now + MIN_EXPIRY_SECONDS))


def _latest(times: dict[str, float], kept: int) -> dict[str, float]:
    """The `kept` latest, as a sorted set trimmed by rank keeps them (ties: the greater member)."""
    return dict(sorted(times.items(), key=lambda pair: (pair[1], pair[0].encode()))[-kept:]) if kept > 0 else {}


def online_state_rebuild(
    *, sessions_to_users: Iterable[tuple[str, str]], users: bool = True, items: bool = True
) -> OnlineStateRebuildReport:
    """The users' (`users`) and the items' (`items`) online state from the log. `sessions_to_users`: (session id,
    user id) of every identified session, read once and only when the users are rebuilt (an iterator keeps a
    million links out of memory)."""
    users_count = users_online_state_rebuild(sessions_to_users=sessions_to_users) if users else 0
    counters = item_counters_rebuild() if items else None
    report = OnlineStateRebuildReport(
        users=users_count,
        items=counters.items if counters else 0,
        placement_items=counters.placement_items if counters else 0,
    )
    logger.info("signals.online_state_rebuilt", extra=report.__dict__)
    return report


def users_online_state_rebuild(*, sessions_to_users: Iterable[tuple[str, str]]) -> int:
    """Every user's (and session's) online state from the log, a session identified in `sessions_to_users` as its
    user's; how many were written."""
    types = {name: kind for name, kind in event_types().items() if _touches_user_state(name, kind)}
    entities = catalog_entity_keys()
    client = get_control_redis()
    now = time.time()
    written = 0
    pipeline = client.pipeline(transaction=False)
    with connection.cursor() as cursor:
        cursor.execute(_USER_EVENTS_COUNT_SQL, {"types": sorted(types)})
        total = int(cursor.fetchone()[0])
    progress = Progress("online state rebuild: events replayed", total=total, every_seconds=REBUILD_PROGRESS_SECONDS)
    events = _user_events(sorted(types), sessions_to_users)
    for user_key, rows in itertools.groupby(events, key=lambda row: row[0]):
        state = UserState()
        replayed = 0
        for _, item_id, type_name, ts in rows:
            state.add(
                item=item_id, type_name=type_name, kind=types[type_name], ts=ts, entities=entities.get(item_id, "")
            )
            replayed += 1
        state.queue_write(pipeline, user_key, now)
        written += 1
        if written % WRITE_USERS == 0:
            pipeline.execute()
        progress.advance(replayed)
    pipeline.execute()
    progress.finish()
    return written


def _touches_user_state(name: str, kind: EventType) -> bool:
    return kind.marks_interest or kind.popularity_weight > 0 or name == "purchase" or name in COOLDOWN_EVENT_TYPES


def _user_events(
    types: list[str], sessions_to_users: Iterable[tuple[str, str]]
) -> Iterator[tuple[str, str, str, float]]:
    """(user key, item, type, time) of every event that feeds user state, by user then event time (server-side
    cursor: the log may not fit in memory)."""
    with transaction.atomic():
        _identity_links_load(sessions_to_users)
        yield from _user_events_read(types)


def _identity_links_load(sessions_to_users: Iterable[tuple[str, str]]) -> None:
    """The links into this transaction's temporary table, a COPY per batch: the links may come from a cursor on
    this same connection, which cannot fetch while a COPY is open."""
    links = iter(sessions_to_users)
    with connection.cursor() as cursor:
        cursor.execute(_LINKS_TABLE_DROP_SQL)
        cursor.execute(_LINKS_TABLE_SQL)
        while batch := list(itertools.islice(links, IDENTITY_LINKS_COPY_ROWS)):
            # As for execute(): the driver's errors become Django's (DatabaseError and subclasses).
            with connection.wrap_database_errors, cursor.copy(_LINKS_COPY_SQL) as copy:
                for session_id, user_id in batch:
                    copy.write_row((session_id, user_id))
        cursor.execute("ANALYZE rebuild_identity_links")  # the join's plan: a temporary table has no statistics


def _user_events_read(types: list[str]) -> Iterator[tuple[str, str, str, float]]:
    with connection.chunked_cursor() as cursor:
        cursor.cursor.itersize = FETCH_ROWS  # rows a fetch from the server (psycopg's cursor under Django's)
        cursor.execute(_USER_EVENTS_SQL, {"types": types})
        for user_key, item_id, type_name, ts in cursor:
            yield user_key, item_id, type_name, float(ts)
