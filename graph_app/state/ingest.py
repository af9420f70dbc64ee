"""The online state an event updates, in one Redis round trip (hot path: plain Python, no ORM).

Per partition of the request a Lua script runs (a call per SCRIPT_CALL_EVENTS events) and, atomically for each
event: drops a duplicate (event id seen in the last 48 h), updates the user's recent and session items, the user's
decayed per-entity counters, the item's decayed popularity windows, the user's cool-down set (a hide or a skip)
and purchased set (both even for a late event: adding it again changes nothing), and appends the event to the
partition's stream for the durable log. All the script calls of a request go out in one pipeline.

An event older than the dedupe window (late) may be a resend Redis no longer remembers: the ingest script only
appends it to the stream, and the durable log, unique on event id, decides. The apply script (`apply_script`,
control plane) applies the events the log stored as new, late ones and imported history, with the same Lua
functions (`state.lua`): a late item goes into the user's recent items by its time, not in front.

Decayed counters use forward decay: an event of weight w at time t adds w * 2^((t - epoch) / half_life), so
the stored numbers of one key rank correctly at any moment and the value at time T is
stored * 2^(-(T - epoch) / half_life). The epoch moves forward (rebase) before the factors grow too large.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import redis
from django.conf import settings
from redis.exceptions import BusyLoadingError, NoScriptError, OutOfMemoryError, ReadOnlyError

from graph_app.features.definitions import (
    AFFINITY_HALF_LIFE_SECONDS,
    AFFINITY_TTL_SECONDS,
    CTR_HALF_LIFE_SECONDS,
    POPULARITY_HALF_LIVES,
    RECENT_ITEMS_FOR_SIMILARITY,
)
from graph_app.features.user_affinity import AFFINITY_REBASE_AFTER_HALF_LIVES
from graph_app.state import dedupe
from graph_app.state.dedupe import DEDUPE_WINDOW, DEDUPE_WINDOW_SECONDS, Generations, PartitionLayout
from graph_app.state.event_types import EventType
from graph_app.state.records import EventInput
from personalization import redis_keys
from personalization.redis_client import ReplicasWait, ShaScript, is_cluster, script_pipeline_execute

logger = logging.getLogger(__name__)

__all__ = ["DEDUPE_WINDOW", "DEDUPE_WINDOW_SECONDS"]  # their home is graph_app.state.dedupe
# The readers take the first 20 (the feature store's RECENT_ITEMS_FOR_SIMILARITY, retrieval's RECENT_ITEMS_USED), and
# a list's first 20 after a push or a late insert depend only on its first 20 before: more would be memory unread.
RECENT_ITEMS_KEPT = RECENT_ITEMS_FOR_SIMILARITY
RECENT_ITEMS_TTL_SECONDS = int(AFFINITY_TTL_SECONDS)
SESSION_ITEMS_TTL_SECONDS = 30 * 60
# Half-lives of the item popularity windows and of user affinities: the feature store's definitions.
TREND_WINDOWS: dict[str, float] = POPULARITY_HALF_LIVES
# 2^200 is far from overflowing a double while rebasing rarely (every 200 half-lives).
REBASE_AFTER_HALF_LIVES = 200
# Events per script call (a call runs about 60 µs an event).
SCRIPT_CALL_EVENTS = 50
# Sends of a call: again after Redis forgot the script, or after another process added a dedupe level.
INGEST_ATTEMPTS = 3
# Hides and skips put the item in a per-user cool-down set (read by surface_app.serving.caps): the latest
# COOLDOWN_ITEMS_KEPT items, for at most COOLDOWN_KEPT_SECONDS (the longest cool-down a cap can ask for).
COOLDOWN_EVENT_TYPES = frozenset({"hide", "skip"})
COOLDOWN_ITEMS_KEPT = 200
COOLDOWN_KEPT_SECONDS = 30 * 24 * 3600

# The constants the Lua files use.
LUA_CONSTANTS = {**dedupe.LUA_CONSTANTS, "AFFINITY_REBASE_AFTER_HALF_LIVES": AFFINITY_REBASE_AFTER_HALF_LIVES}
# What the ingest and apply scripts share (`state.lua`: their common KEYS and ARGV, one Lua function per piece of
# online state, so that a late or imported event changes the state exactly as a live one does), after the
# fragments it calls: the packed counters, the affinity hash's layout, the dedupe.
STATE_FILES = ("packed_add.lua", "affinity.lua", "dedupe.lua", "state.lua")
# A session's affinities added into its user's hash when the storefront identifies it (`graph_app.state.identity`).
affinity_merge_script = ShaScript.from_files(__file__, "affinity.lua", "affinity_merge.lua", constants=LUA_CONSTANTS)


# Errors a script call gets before it writes anything (Redis refuses a script's first write when over maxmemory or
# on a read-only replica, and the whole call when loading, busy or without its master).
REFUSED_BEFORE_ANY_WRITE: tuple[type[Exception], ...] = (OutOfMemoryError, ReadOnlyError, BusyLoadingError)
REFUSED_BEFORE_ANY_WRITE_PREFIXES = ("BUSY", "MASTERDOWN")


class EventOutcome(enum.Enum):
    """What the ingest script did with an event."""

    NEW = "new"
    DUPLICATE = "duplicate"  # its event id was seen before: applied by an earlier request
    NOT_APPLIED = "not_applied"  # its script call failed or was not sent: nothing of it was written
    UNKNOWN = "unknown"  # its call was sent but no reply came: it may or may not have run

    @property
    def applied(self) -> bool:
        return self in (EventOutcome.NEW, EventOutcome.DUPLICATE)


@dataclass(frozen=True)
class OnlineEvent:
    """A validated event and what its type means to the online state."""

    event: EventInput
    event_type: EventType
    received_at: datetime
    # Set by bulk back-fills of history (demo data): apply events older than the dedupe window online too.
    backfill: bool = False


def stream_payload(online: OnlineEvent) -> bytes:
    event = online.event
    return orjson.dumps(
        {
            "kind": "event",
            "event_id": event.event_id,
            "type": event.type,
            "user_id": event.user_id,
            "session_id": event.session_id,
            "item_id": event.item_id,
            "placement": event.placement,
            "request_id": event.request_id,
            "slot": event.slot,
            "value": event.value,
            "context": event.context,
            "occurred_at": event.occurred_at.isoformat(),
            # A back-filled event counts as received when it happened (it is replayed history, applied online).
            "received_at": (event.occurred_at if online.backfill else online.received_at).isoformat(),
        }
    )


def _common(
    script: ShaScript, partition: int, events: int, layout: PartitionLayout, arrival: float, dedupe_keys: int
) -> tuple[list[str], list[str | bytes | float | int]]:
    """The KEYS and ARGV both scripts start with (`state.lua`), before their own."""
    generations = layout.generations
    return script.arguments(
        trend_epochs=redis_keys.item_trend_epochs(partition),
        stream=redis_keys.event_stream(partition),
        catalog_entities=redis_keys.catalog_entities(partition),
        item_counters=redis_keys.item_counters(partition),
        dedupe_layout=redis_keys.event_seen_layout(partition),
        more_keys=[redis_keys.item_trend(partition, window) for window in TREND_WINDOWS],
        events=events,
        entities_kept=settings.SIGNALS_AFFINITY_ENTITIES_KEPT,
        recent_kept=RECENT_ITEMS_KEPT,
        state_ttl=RECENT_ITEMS_TTL_SECONDS,
        session_ttl=SESSION_ITEMS_TTL_SECONDS,
        affinity_half_life=AFFINITY_HALF_LIFE_SECONDS,
        rebase_after=REBASE_AFTER_HALF_LIVES,
        now=repr(time.time()),
        cooldown_kept=COOLDOWN_ITEMS_KEPT,
        cooldown_seconds=COOLDOWN_KEPT_SECONDS,
        purchased_kept=settings.SIGNALS_PURCHASED_ITEMS_KEPT,
        dedupe_keys=dedupe_keys,
        ids_per_set=dedupe.IDS_PER_SET,
        max_shard_bits=dedupe.MAX_SHARD_BITS,
        max_levels=dedupe.MAX_LEVELS,
        generation=generations.current,
        generation_end=generations.current_end,
        expire_at=generations.expire_at,
        arrival=repr(arrival),
        current_levels=layout.current_levels,
        windows=len(TREND_WINDOWS),
        checked=len(generations.checked),
        more=[*TREND_WINDOWS.values(), *layout.generation_args()],
    )


def _is_stale(reply: object) -> bool:
    """The script refused the call (writing nothing): its dedupe layouts were not the stored ones."""
    return reply in (dedupe.STALE, dedupe.STALE.decode())


class IngestScript:
    """The ingest script (`ingest.lua`), called by its SHA and reloaded after a Redis restart or failover."""

    def __init__(self) -> None:
        self.script = ShaScript.from_files(__file__, *STATE_FILES, "ingest.lua", constants=LUA_CONSTANTS)
        self._event = self.script.record("EVENT")
        self._event_keys = self.script.record("EVENT_KEYS")

    def load(self, client: redis.Redis) -> str:
        self.script.forget()
        return self.script.loaded(client)

    def queue(
        self,
        client: redis.Redis,
        pipeline: redis.client.Pipeline,
        partition: int,
        events: Sequence[OnlineEvent],
        generations: Generations,
    ) -> None:
        """One script call for the events of one partition (their dedupe layouts fetched before)."""
        layout = dedupe.layouts.of(partition, generations)
        event_keys: list[str] = []
        event_args: list[str | bytes | float | int] = []
        dedupe_keys = 0
        for online in events:
            event = online.event
            member, seen = layout.keys(event.event_id)
            dedupe_keys = len(seen)
            event_keys += self._event_keys.values(
                recent=redis_keys.user_recent_items(event.user_key),
                session_items=redis_keys.user_session_items(event.user_key, event.session_id or "-"),
                affinity=redis_keys.user_affinity(event.user_key),
                placement_counters=redis_keys.placement_counters(partition, event.placement or "-"),
                recent_last=redis_keys.user_recent_last(event.user_key),
                cooldown=redis_keys.user_cooldown(event.user_key),
                purchased=redis_keys.user_purchased(event.user_key),
                dedupe_sets=seen,
            )
            event_args += self._event.values(
                item=event.item_id,
                weight=online.event_type.popularity_weight,
                marks_interest="1" if online.event_type.marks_interest else "0",
                ts=repr(event.occurred_at.timestamp()),
                payload=stream_payload(online),
                has_session="1" if event.session_id and event.user_id else "0",
                late="1" if not online.backfill and event.occurred_at < online.received_at - DEDUPE_WINDOW else "0",
                placement_click="1" if event.type == "click" and event.placement else "0",
                ctr_half_life=CTR_HALF_LIFE_SECONDS,
                cooldown="1" if event.type in COOLDOWN_EVENT_TYPES else "0",
                purchase="1" if event.type == "purchase" else "0",
                dedupe_member=member,
            )
        keys, args = _common(self.script, partition, len(events), layout, generations.arrival, dedupe_keys)
        self.script.queue(client, pipeline, keys + event_keys, args + event_args)

    def run(
        self,
        client: redis.Redis,
        events: Sequence[OnlineEvent],
        also: Callable[[redis.client.Pipeline], None] | None = None,
        replicas_wait: ReplicasWait | None = None,
    ) -> list[EventOutcome]:
        """Apply the events in one round trip (script calls per partition): each event's outcome. A call's writes
        are atomic, so each event is applied or not as its call is; a reply that never came (a timeout, a dropped
        connection) leaves its events UNKNOWN. `also` may queue more commands on the same pipeline (their replies
        are ignored). `replicas_wait` (a Redis Cluster): the same pipeline then waits for the replicas of each master
        written to, and counts those that fell short."""
        self.script.loaded(client)
        by_partition: dict[int, list[int]] = {}
        for index, online in enumerate(events):
            by_partition.setdefault(redis_keys.partition_of(online.event.user_key), []).append(index)
        # Calls of at most SCRIPT_CALL_EVENTS events: their replies arrive one after the other, each well within
        # the socket timeout, where one call for a 500-event batch could take longer.
        calls = [
            (partition, indexes[start : start + SCRIPT_CALL_EVENTS])
            for partition, indexes in by_partition.items()
            for start in range(0, len(indexes), SCRIPT_CALL_EVENTS)
        ]
        outcomes = [EventOutcome.NOT_APPLIED] * len(events)
        # The dedupe's generations by the request's arrival (one for all its events).
        arrival = max(online.received_at for online in events).timestamp() if events else time.time()
        generations = dedupe.generations_at(arrival)
        stale: set[int] = set()
        for attempt in range(INGEST_ATTEMPTS):
            try:
                # The dedupe layouts of the partitions this process does not know yet (or knew as they were): a
                # round trip that writes only layouts, so a failure applied none of the events.
                dedupe.layouts.fetch(
                    client,
                    [(p, generations) for p, _ in calls if p in stale or dedupe.layouts.missing(p, generations)],
                )
            except redis.RedisError as error:
                logger.warning("signals.ingest_not_sent", extra={"error": repr(error), "events": len(events)})
                return outcomes
            pipeline = client.pipeline(transaction=False)
            for partition, indexes in calls:
                self.queue(client, pipeline, partition, [events[index] for index in indexes], generations)
            if also is not None and attempt == 0:
                also(pipeline)
            waits = 0
            if replicas_wait is not None:
                streams = [redis_keys.event_stream(partition) for partition, _ in calls]
                waits = replicas_wait.queue(client, pipeline, streams)
            try:
                # Connected before anything is sent: a Redis that cannot be reached got none of the events. (A
                # cluster pipeline connects to each master as it sends: one that cannot be reached raises below.)
                if not is_cluster(client):
                    pipeline.connection = client.connection_pool.get_connection()
            except redis.RedisError as error:
                logger.warning("signals.ingest_not_sent", extra={"error": repr(error), "events": len(events)})
                return outcomes
            try:
                replies = pipeline.execute(raise_on_error=False)
            except redis.RedisError as error:
                # Sent, maybe run, but no word back: the client may resend these (event ids make it safe).
                logger.warning("signals.ingest_outcome_unknown", extra={"error": repr(error), "events": len(events)})
                for _partition, indexes in calls:
                    for index in indexes:
                        outcomes[index] = EventOutcome.UNKNOWN
                return outcomes
            if replicas_wait is not None and waits:
                replicas_wait.count(replies[-waits:])
            forgotten = []
            stale = set()
            script_forgotten = False
            for call, reply in zip(calls, replies[: len(calls)], strict=True):
                if isinstance(reply, NoScriptError):
                    forgotten.append(call)  # nothing of this call ran
                    script_forgotten = True
                elif _is_stale(reply):
                    forgotten.append(call)  # nothing of this call ran: send it again with the layouts as stored
                    stale.add(call[0])
                elif isinstance(reply, Exception):
                    logger.warning("signals.ingest_call_failed", extra={"error": repr(reply), "events": len(call[1])})
                    # A script is not rolled back when it fails midway: only a refusal of its first write (or of
                    # the whole call) says that nothing of it was written.
                    refused = isinstance(reply, REFUSED_BEFORE_ANY_WRITE) or str(reply).startswith(
                        REFUSED_BEFORE_ANY_WRITE_PREFIXES
                    )
                    if not refused:
                        for index in call[1]:
                            outcomes[index] = EventOutcome.UNKNOWN
                else:
                    for index, is_new in zip(call[1], reply, strict=True):
                        outcomes[index] = EventOutcome.NEW if is_new else EventOutcome.DUPLICATE
            if not forgotten or attempt == INGEST_ATTEMPTS - 1:
                return outcomes
            # Scripts do not survive a restart or a failover: load it again and send the calls that did not run.
            try:
                if script_forgotten:
                    self.load(client)
            except redis.RedisError:
                return outcomes  # the forgotten calls stay NOT_APPLIED
            calls = forgotten
        raise AssertionError("unreachable")


ingest_script = IngestScript()


@dataclass(frozen=True)
class LoggedEvent:
    """An event the durable log stored as new that the ingest script did not apply: a late one, or imported."""

    event: EventInput
    event_type: EventType
    # An imported event within the dedupe window: the ingest script may have applied it (the log had not stored it
    # yet), so it is applied only if its event id was not seen, and a resend through the API is then a duplicate.
    dedupe: bool = False


class ApplyScript:
    """The apply script (control plane: the event-log consumer and the importer, with the control client)."""

    def __init__(self) -> None:
        self.script = ShaScript.from_files(__file__, *STATE_FILES, "apply.lua", constants=LUA_CONSTANTS)
        self._event = self.script.record("EVENT")
        self._event_keys = self.script.record("EVENT_KEYS")

    def run(
        self, client: redis.Redis, events: Sequence[LoggedEvent], known: Mapping[str, Mapping[str, float]]
    ) -> list[bool]:
        """Apply the events (each user's in event-time order) in one round trip; True for each one applied.
        `known`: user key -> item -> the time of the latest event the log holds that put the item in the user's
        recent items (the items there without one are newer than any late event)."""
        by_partition: dict[int, list[int]] = {}
        for index, logged in enumerate(events):
            by_partition.setdefault(redis_keys.partition_of(logged.event.user_key), []).append(index)
        # Short calls, like ingest's: Redis serves the hot path between them.
        chunks = [
            (partition, indexes[start : start + SCRIPT_CALL_EVENTS])
            for partition, indexes in by_partition.items()
            for start in range(0, len(indexes), SCRIPT_CALL_EVENTS)
        ]
        arrival = time.time()
        generations = dedupe.generations_at(arrival)
        outcomes = [False] * len(events)
        to_send = set(range(len(chunks)))
        stale: set[int] = set()
        for _attempt in range(INGEST_ATTEMPTS):
            dedupe.layouts.fetch(
                client, [(p, generations) for p, _ in chunks if p in stale or dedupe.layouts.missing(p, generations)]
            )
            # Every call built again in order (each user's known times carry from one call to the next), the ones
            # already run left out.
            known_running = {user_key: dict(items) for user_key, items in known.items()}
            calls = [
                (number, chunk, *self._call(p, [events[i] for i in chunk], known_running, generations))
                for number, (p, chunk) in enumerate(chunks)
            ]
            calls = [call for call in calls if call[0] in to_send]

            def queue(pipeline: redis.client.Pipeline, calls: list[Any] = calls) -> None:
                for _number, _chunk, keys, args in calls:
                    self.script.queue(client, pipeline, keys, args)

            replies = script_pipeline_execute(client, queue, self.script)
            stale = set()
            for (number, chunk, _keys, _args), reply in zip(calls, replies, strict=True):
                if _is_stale(reply):  # nothing of it ran: sent again with the layouts as stored
                    stale.add(chunks[number][0])
                    continue
                to_send.discard(number)
                for index, applied in zip(chunk, reply, strict=True):
                    outcomes[index] = bool(applied)
            if not to_send:
                return outcomes
        raise redis.RedisError("the dedupe layout kept changing: some events were not applied")

    def _call(
        self,
        partition: int,
        events: Sequence[LoggedEvent],
        known: dict[str, dict[str, float]],
        generations: Generations,
    ) -> tuple[list[str], list[str | bytes | float | int]]:
        recent_known = {
            redis_keys.user_recent_items(user_key): known.get(user_key, {})
            for user_key in {logged.event.user_key for logged in events}
        }
        event_keys: list[str] = []
        event_args: list[str | bytes | float | int] = [orjson.dumps(recent_known)]
        layout = dedupe.layouts.of(partition, generations)
        dedupe_keys = 0
        for logged in events:
            event, kind = logged.event, logged.event_type
            member, seen = layout.keys(event.event_id)
            dedupe_keys = len(seen)
            event_keys += self._event_keys.values(
                recent=redis_keys.user_recent_items(event.user_key),
                recent_last=redis_keys.user_recent_last(event.user_key),
                affinity=redis_keys.user_affinity(event.user_key),
                placement_counters=redis_keys.placement_counters(partition, event.placement or "-"),
                cooldown=redis_keys.user_cooldown(event.user_key),
                purchased=redis_keys.user_purchased(event.user_key),
                dedupe_sets=seen,
            )
            timestamp = event.occurred_at.timestamp()
            event_args += self._event.values(
                item=event.item_id,
                weight=kind.popularity_weight,
                marks_interest="1" if kind.marks_interest else "0",
                ts=repr(timestamp),
                dedupe="1" if logged.dedupe else "0",
                placement_click="1" if event.type == "click" and event.placement else "0",
                ctr_half_life=CTR_HALF_LIFE_SECONDS,
                cooldown="1" if event.type in COOLDOWN_EVENT_TYPES else "0",
                purchase="1" if event.type == "purchase" else "0",
                dedupe_member=member,
            )
            if kind.marks_interest:  # what the next call of the same user must know
                items = known.setdefault(event.user_key, {})
                items[event.item_id] = max(items.get(event.item_id, timestamp), timestamp)
        keys, args = _common(self.script, partition, len(events), layout, generations.arrival, dedupe_keys)
        return keys + event_keys, args + event_args


apply_script = ApplyScript()
