"""The online state an event updates, in one Redis round trip (hot path: plain Python, no ORM).

Per partition of the request a Lua script runs (a call per SCRIPT_CALL_EVENTS events) and, atomically for each
event: drops a duplicate (event id seen in the last 48 h; an event older than that only goes to the durable log,
which is unique on event id), updates the user's recent and session items, the user's decayed per-entity
counters, the item's decayed popularity windows, the user's cool-down set (a hide or a skip, even a late one:
adding it again changes nothing), and appends the event to the partition's stream for the durable log. All the
script calls of a request go out in one pipeline.

Decayed counters use forward decay: an event of weight w at time t adds w * 2^((t - epoch) / half_life), so
the stored numbers of one key rank correctly at any moment and the value at time T is
stored * 2^(-(T - epoch) / half_life). The epoch moves forward (rebase) before the factors grow too large.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson
import redis
from redis.exceptions import NoScriptError

from graph_app.features.definitions import (
    AFFINITY_HALF_LIFE_SECONDS,
    AFFINITY_TTL_SECONDS,
    CTR_HALF_LIFE_SECONDS,
    POPULARITY_HALF_LIVES,
)
from personalization import redis_keys
from signals_app.event_types import EventType
from signals_app.validation import EventInput

DEDUPE_WINDOW_SECONDS = 48 * 3600
DEDUPE_WINDOW = timedelta(seconds=DEDUPE_WINDOW_SECONDS)
RECENT_ITEMS_KEPT = 50
RECENT_ITEMS_TTL_SECONDS = int(AFFINITY_TTL_SECONDS)
SESSION_ITEMS_TTL_SECONDS = 30 * 60
# Half-lives of the item popularity windows and of user affinities: the feature store's definitions.
TREND_WINDOWS: dict[str, float] = POPULARITY_HALF_LIVES
# 2^200 is far from overflowing a double while rebasing rarely (every 200 half-lives).
REBASE_AFTER_HALF_LIVES = 200
# Events per script call (a call runs about 60 µs an event).
SCRIPT_CALL_EVENTS = 50
# Hides and skips put the item in a per-user cool-down set (read by surface_app.serving.caps): the latest
# COOLDOWN_ITEMS_KEPT items, for at most COOLDOWN_KEPT_SECONDS (the longest cool-down a cap can ask for).
COOLDOWN_EVENT_TYPES = frozenset({"hide", "skip"})
COOLDOWN_ITEMS_KEPT = 200
COOLDOWN_KEPT_SECONDS = 30 * 24 * 3600

PACKED_ADD_LUA = """
-- An item's decayed counters in one packed record (doubles: the values at time `last`, then `last`), so that the
-- feature store reads every counter of 500 items with one HMGET: an event adds to each value with the value's own
-- half-life. A late event (before `last`) adds its decayed amount.
local function packed_add(key, item, ts, increments, half_lives)
  local n = #half_lives
  local format = '<' .. string.rep('d', n + 1)
  local packed = redis.call('HGET', key, item)
  local values = {}
  local last = nil
  if packed and #packed == 8 * (n + 1) then
    local fields = {struct.unpack(format, packed)}
    for i = 1, n do values[i] = fields[i] end
    last = fields[n + 1]
  end
  if not last then
    for i = 1, n do values[i] = increments[i] end
    last = ts
  elseif ts >= last then
    for i = 1, n do values[i] = values[i] * 2 ^ (-(ts - last) / half_lives[i]) + increments[i] end
    last = ts
  else
    for i = 1, n do values[i] = values[i] + increments[i] * 2 ^ (-(last - ts) / half_lives[i]) end
  end
  values[n + 1] = last
  redis.call('HSET', key, item, struct.pack(format, unpack(values)))
end
"""

INGEST_SCRIPT = (
    """
-- One partition's share of a request. KEYS: 1 decay epochs, 2 stream, 3 catalog entities, 4 item counters,
-- 5..4+W trend keys, then 8 keys an event: seen, recent, session items, affinity, placement counters, recent-last,
-- cool-down, purchased. ARGV: 1 events, 2 dedupe ttl, 3 recent kept, 4 user state ttl, 5 session ttl,
-- 6 affinity half-life, 7 rebase after, 8 windows W, 9..8+W trend half-lives, 9+W now, 10+W cool-down items kept,
-- 11+W cool-down seconds kept, then 11 values an event: item, weight, marks interest, ts, payload, has session,
-- late, is click in a placement, ctr half-life, starts a cool-down (hide or skip), is a purchase.
local events = tonumber(ARGV[1])
local windows = tonumber(ARGV[8])
local rebase_after = tonumber(ARGV[7])
local affinity_half_life = tonumber(ARGV[6])
local state_ttl = tonumber(ARGV[4])
local now = tonumber(ARGV[9 + windows])
local cooldown_kept, cooldown_seconds = tonumber(ARGV[10 + windows]), tonumber(ARGV[11 + windows])
-- User state lasts state_ttl after its latest event, by event time: a gap longer than that starts it afresh
-- (the offline materialization applies the same rule). Redis expiry only reclaims memory, a day at the least.
local function expire_after(key, last)
  redis.call('EXPIREAT', key, math.floor(math.max(last + state_ttl, now + 86400)))
end
local trend_epochs, trend_half_lives = {}, {}
for w = 1, windows do
  trend_epochs[w] = tonumber(redis.call('HGET', KEYS[1], KEYS[4 + w]))
  trend_half_lives[w] = tonumber(ARGV[8 + w])
end
"""
    + PACKED_ADD_LUA
    + """local results = {}
for e = 0, events - 1 do
  local k = 4 + windows + 8 * e
  local a = 11 + windows + 11 * e
  local item, weight, ts = ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 4])
  if not redis.call('SET', KEYS[k + 1], '1', 'NX', 'EX', ARGV[2]) then
    results[e + 1] = 0
  else
    results[e + 1] = 1
    -- Idempotent (the later time wins), so a late hide still counts for a long cool-down.
    if item ~= '' and ARGV[a + 10] == '1' then
      local cooldown = KEYS[k + 7]
      redis.call('ZADD', cooldown, 'GT', ARGV[a + 4], item)
      redis.call('ZREMRANGEBYSCORE', cooldown, '-inf', now - cooldown_seconds)
      redis.call('ZREMRANGEBYRANK', cooldown, 0, -cooldown_kept - 1)
      redis.call('EXPIRE', cooldown, cooldown_seconds)
    end
    -- What the user bought (placements may leave it out), the latest COOLDOWN_ITEMS_KEPT.
    if item ~= '' and ARGV[a + 11] == '1' then
      local purchased = KEYS[k + 8]
      redis.call('ZADD', purchased, 'GT', ARGV[a + 4], item)
      redis.call('ZREMRANGEBYRANK', purchased, 0, -cooldown_kept - 1)
      redis.call('EXPIRE', purchased, state_ttl)
    end
    -- Older than the dedupe window (late): maybe a resend we no longer remember, so it only goes to the
    -- durable log, which is unique on event id; its decayed weight would be negligible online anyway.
    if ARGV[a + 7] ~= '1' then
      if item ~= '' and ARGV[a + 3] == '1' then
        local last = tonumber(redis.call('GET', KEYS[k + 6]))
        if last and ts - last > state_ttl then redis.call('DEL', KEYS[k + 2]) end
        if not last or ts > last then
          last = ts
          redis.call('SET', KEYS[k + 6], ts)
        end
        redis.call('LREM', KEYS[k + 2], 0, item)
        redis.call('LPUSH', KEYS[k + 2], item)
        redis.call('LTRIM', KEYS[k + 2], 0, tonumber(ARGV[3]) - 1)
        expire_after(KEYS[k + 2], last)
        expire_after(KEYS[k + 6], last)
        if ARGV[a + 6] == '1' then
          redis.call('LREM', KEYS[k + 3], 0, item)
          redis.call('LPUSH', KEYS[k + 3], item)
          redis.call('LTRIM', KEYS[k + 3], 0, tonumber(ARGV[3]) - 1)
          redis.call('EXPIRE', KEYS[k + 3], ARGV[5])
        end
      end
      if item ~= '' and weight > 0 then
        local weights = {}
        for w = 1, windows do weights[w] = weight end
        packed_add(KEYS[4], item, ts, weights, trend_half_lives)
        for w = 1, windows do
          local key = KEYS[4 + w]
          local half_life = trend_half_lives[w]
          local epoch = trend_epochs[w]
          if not epoch then
            epoch = ts
            trend_epochs[w] = epoch
            redis.call('HSET', KEYS[1], key, epoch)
          elseif (ts - epoch) / half_life > rebase_after then
            redis.call('ZUNIONSTORE', key, 1, key, 'WEIGHTS', 2 ^ (-(ts - epoch) / half_life))
            epoch = ts
            trend_epochs[w] = epoch
            redis.call('HSET', KEYS[1], key, epoch)
          end
          redis.call('ZINCRBY', key, weight * 2 ^ ((ts - epoch) / half_life), item)
        end
        local entities = redis.call('HGET', KEYS[3], item)
        if entities then
          local affinity = KEYS[k + 4]
          local last = tonumber(redis.call('HGET', affinity, '_last'))
          if last and ts - last > state_ttl then
            redis.call('DEL', affinity)
            last = nil
          end
          local epoch = tonumber(redis.call('HGET', affinity, '_epoch'))
          if not epoch then
            epoch = ts
            redis.call('HSET', affinity, '_epoch', epoch)
          elseif (ts - epoch) / affinity_half_life > rebase_after then
            local fields = redis.call('HGETALL', affinity)
            local factor = 2 ^ (-(ts - epoch) / affinity_half_life)
            for position = 1, #fields, 2 do
              if string.sub(fields[position], 1, 2) == 'f:' then
                redis.call('HSET', affinity, fields[position], tonumber(fields[position + 1]) * factor)
              end
            end
            epoch = ts
            redis.call('HSET', affinity, '_epoch', epoch)
          end
          local increment = weight * 2 ^ ((ts - epoch) / affinity_half_life)
          for entity in string.gmatch(entities, '[^|]+') do
            redis.call('HINCRBYFLOAT', affinity, 'f:' .. entity, increment)
            local seen = tonumber(redis.call('HGET', affinity, 'r:' .. entity) or '0')
            if ts > seen then redis.call('HSET', affinity, 'r:' .. entity, ts) end
          end
          if not last or ts > last then
            last = ts
            redis.call('HSET', affinity, '_last', ts)
          end
          expire_after(affinity, last)
        end
      end
      if item ~= '' and ARGV[a + 8] == '1' then
        local ctr_half_life = tonumber(ARGV[a + 9])
        packed_add(KEYS[k + 5], item, ts, {1, 0}, {ctr_half_life, ctr_half_life})
      end
    end
    redis.call('XADD', KEYS[2], '*', 'e', ARGV[a + 5])
  end
end
return results
"""
)


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


class IngestScript:
    """The ingest script, called by its SHA and reloaded after a Redis restart or failover."""

    def __init__(self) -> None:
        self.sha: str | None = None

    def load(self, client: redis.Redis) -> str:
        self.sha = str(client.script_load(INGEST_SCRIPT))
        return self.sha

    def queue(self, pipeline: redis.client.Pipeline, partition: int, events: Sequence[OnlineEvent]) -> None:
        """One script call for the events of one partition."""
        keys = [
            redis_keys.item_trend_epochs(partition),
            redis_keys.event_stream(partition),
            redis_keys.catalog_entities(partition),
            redis_keys.item_counters(partition),
            *(redis_keys.item_trend(partition, window) for window in TREND_WINDOWS),
        ]
        args: list[str | bytes | float | int] = [
            len(events),
            DEDUPE_WINDOW_SECONDS,
            RECENT_ITEMS_KEPT,
            RECENT_ITEMS_TTL_SECONDS,
            SESSION_ITEMS_TTL_SECONDS,
            AFFINITY_HALF_LIFE_SECONDS,
            REBASE_AFTER_HALF_LIVES,
            len(TREND_WINDOWS),
            *TREND_WINDOWS.values(),
            repr(time.time()),
            COOLDOWN_ITEMS_KEPT,
            COOLDOWN_KEPT_SECONDS,
        ]
        for online in events:
            event = online.event
            keys += [
                redis_keys.event_seen(partition, event.event_id),
                redis_keys.user_recent_items(event.user_key),
                redis_keys.user_session_items(event.user_key, event.session_id or "-"),
                redis_keys.user_affinity(event.user_key),
                redis_keys.placement_counters(partition, event.placement or "-"),
                redis_keys.user_recent_last(event.user_key),
                redis_keys.user_cooldown(event.user_key),
                redis_keys.user_purchased(event.user_key),
            ]
            args += [
                event.item_id,
                online.event_type.popularity_weight,
                "1" if online.event_type.marks_interest else "0",
                repr(event.occurred_at.timestamp()),
                stream_payload(online),
                "1" if event.session_id and event.user_id else "0",
                "1" if not online.backfill and event.occurred_at < online.received_at - DEDUPE_WINDOW else "0",
                "1" if event.type == "click" and event.placement else "0",
                CTR_HALF_LIFE_SECONDS,
                "1" if event.type in COOLDOWN_EVENT_TYPES else "0",
                "1" if event.type == "purchase" else "0",
            ]
        assert self.sha is not None
        pipeline.evalsha(self.sha, len(keys), *keys, *args)

    def run(
        self,
        client: redis.Redis,
        events: Sequence[OnlineEvent],
        also: Callable[[redis.client.Pipeline], None] | None = None,
    ) -> list[bool]:
        """Apply the events in one round trip (script calls per partition); True for each event that was new.
        `also` may queue more commands on the same pipeline (their replies are ignored)."""
        if self.sha is None:
            self.load(client)
        by_partition: dict[int, list[int]] = {}
        for index, online in enumerate(events):
            by_partition.setdefault(redis_keys.partition_of(online.event.user_key), []).append(index)
        # Calls of at most SCRIPT_CALL_EVENTS events: their replies arrive one after the other, each well within
        # the hot path's short socket timeout, where one call for a 500-event batch could take longer.
        calls = [
            (partition, indexes[start : start + SCRIPT_CALL_EVENTS])
            for partition, indexes in by_partition.items()
            for start in range(0, len(indexes), SCRIPT_CALL_EVENTS)
        ]
        for attempt in range(2):
            pipeline = client.pipeline(transaction=False)
            for partition, indexes in calls:
                self.queue(pipeline, partition, [events[index] for index in indexes])
            if also is not None:
                also(pipeline)
            try:
                replies = pipeline.execute()
            except NoScriptError:
                if attempt:
                    raise
                # Scripts do not survive a restart or a failover: load it again. Nothing ran, so it is safe to retry.
                self.load(client)
                continue
            outcomes = [False] * len(events)
            for (_partition, indexes), reply in zip(calls, replies[: len(calls)], strict=True):
                for index, is_new in zip(indexes, reply, strict=True):
                    outcomes[index] = bool(is_new)
            return outcomes
        raise AssertionError("unreachable")


ingest_script = IngestScript()
