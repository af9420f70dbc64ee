"""The online state an event updates, in one Redis round trip (hot path: plain Python, no ORM).

Per partition of the request a Lua script runs (a call per SCRIPT_CALL_EVENTS events) and, atomically for each
event: drops a duplicate (event id seen in the last 48 h), updates the user's recent and session items, the user's
decayed per-entity counters, the item's decayed popularity windows, the user's cool-down set (a hide or a skip)
and purchased set (both even for a late event: adding it again changes nothing), and appends the event to the
partition's stream for the durable log. All the script calls of a request go out in one pipeline.

An event older than the dedupe window (late) may be a resend Redis no longer remembers: the ingest script only
appends it to the stream, and the durable log, unique on event id, decides. The apply script (`apply_script`,
control plane) applies the events the log stored as new, late ones and imported history, with the same Lua
functions (`STATE_LUA`): a late item goes into the user's recent items by its time, not in front.

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
from graph_app.state.dedupe import DEDUPE_LUA, DEDUPE_WINDOW, DEDUPE_WINDOW_SECONDS, Generations, PartitionLayout
from graph_app.state.event_types import EventType
from graph_app.state.records import EventInput
from personalization import redis_keys
from personalization.redis_client import ShaScript, script_pipeline_execute

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

# The user's affinity hash (`graph_app.features.user_affinity`): one field an entity, named by 6 bytes of the entity
# key's SHA-1, its forward-decayed counter packed as a float, a category's with the time of its latest event after
# it (a double); "#m" the epoch, the latest event's time and the latest item of interest's (doubles, NaN for none).
# Hashes of the older layouts are converted by the first script that writes to them. Needs `entities_kept` (the
# cap) and `affinity_half_life`.
AFFINITY_LUA = (
    """
local affinity_rebase_after = """
    + str(AFFINITY_REBASE_AFTER_HALF_LIVES)
    + """
local function is_category(entity) return string.sub(entity, 1, 9) == 'category:' end
local function known(value) if value ~= value then return nil end return value end
-- (epoch, latest event's time, latest item of interest's time) of "#m", nil for each one unknown.
local function affinity_meta_read(affinity)
  local packed = redis.call('HGET', affinity, '#m')
  if not packed or #packed ~= 24 then return nil, nil, nil end
  local epoch, last, recent_last = struct.unpack('<ddd', packed)
  return known(epoch), known(last), known(recent_last)
end
local function affinity_meta_pack(epoch, last, recent_last)
  local nan = 0 / 0
  return struct.pack('<ddd', epoch or nan, last or nan, recent_last or nan)
end
-- The field naming an entity key: the first 6 bytes of its SHA-1 (`user_affinity.entity_code`); a NUL and a code
-- (a session's entity the merge could not name, or a field of the first coded layout) is that code.
local function affinity_field(entity)
  if #entity == 7 and string.byte(entity, 1) == 0 then return string.sub(entity, 2) end
  local h = redis.sha1hex(entity)
  local bytes = {}
  for i = 1, 11, 2 do bytes[#bytes + 1] = tonumber(string.sub(h, i, i + 1), 16) end
  return string.char(unpack(bytes))
end
-- (counter, time or nil) of a stored field, (0, nil) for none; doubles in the layouts before.
local function affinity_unpack(packed)
  if not packed then return 0, nil end
  local size = #packed
  if size == 12 then
    local counter, seen = struct.unpack('<fd', packed)
    return counter, seen
  elseif size == 4 then
    return (struct.unpack('<f', packed)), nil
  elseif size == 16 then
    local counter, seen = struct.unpack('<dd', packed)
    return counter, seen
  elseif size == 8 then
    return (struct.unpack('<d', packed)), nil
  end
  return 0, nil
end
-- A category's field holds its counter and its time (-inf: none known), another entity's its counter alone.
local function affinity_pack(category, counter, seen)
  if category then return struct.pack('<fd', counter, seen or -math.huge) end
  return struct.pack('<f', counter)
end
local function affinity_hset(affinity, fields)
  for start = 1, #fields, 200 do
    redis.call('HSET', affinity, unpack(fields, start, math.min(start + 199, #fields)))
  end
end
-- A hash of a layout before this one in this one: the first ("f:" counters and "r:" times as text, "_epoch",
-- "_last") or the second (fields named by entity key, or by a NUL and a code, holding doubles; "#e", "#l", "#r").
local function affinity_convert(affinity)
  local old = redis.call('HMGET', affinity, '_epoch', '#e')
  if not old[1] and not old[2] then return end
  local stored = redis.call('HGETALL', affinity)
  local epoch, last, recent_last
  local counters, times, order = {}, {}, {}
  for p = 1, #stored, 2 do
    local name, value = stored[p], stored[p + 1]
    if old[1] then
      local prefix = string.sub(name, 1, 2)
      if prefix == 'f:' then
        order[#order + 1] = string.sub(name, 3)
        counters[order[#order]] = tonumber(value)
      elseif prefix == 'r:' then times[string.sub(name, 3)] = tonumber(value)
      elseif name == '_epoch' then epoch = tonumber(value)
      elseif name == '_last' then last = tonumber(value)
      end
    elseif name == '#e' then epoch = (struct.unpack('<d', value))
    elseif name == '#l' then last = (struct.unpack('<d', value))
    elseif name == '#r' then recent_last = (struct.unpack('<d', value))
    elseif string.byte(name, 1) ~= 35 then
      order[#order + 1] = name
      counters[name], times[name] = affinity_unpack(value)
    end
  end
  local fields = {'#m', affinity_meta_pack(epoch, last, recent_last)}
  for _, entity in ipairs(order) do
    local category = is_category(entity) or (string.byte(entity, 1) == 0 and times[entity] ~= nil)
    fields[#fields + 1] = affinity_field(entity)
    fields[#fields + 1] = affinity_pack(category, counters[entity], times[entity])
  end
  local ttl = redis.call('PTTL', affinity)
  redis.call('DEL', affinity)
  affinity_hset(affinity, fields)
  if ttl > 0 then redis.call('PEXPIRE', affinity, ttl) end
end
-- Every counter times `factor` (a rebase of the epoch; the caller writes the new epoch).
local function affinity_rescale(affinity, factor)
  local stored = redis.call('HGETALL', affinity)
  local fields = {}
  for p = 1, #stored, 2 do
    local name = stored[p]
    if name ~= '#m' then
      local counter, seen = affinity_unpack(stored[p + 1])
      fields[#fields + 1] = name
      fields[#fields + 1] = affinity_pack(seen ~= nil, counter * factor, seen)
    end
  end
  if #fields > 0 then affinity_hset(affinity, fields) end
end
-- Past `entities_kept` entities, every one at the weakest counter goes, until at most that many are left
-- (`graph_app.features.user_affinity.weakest_dropped`: ties all go, so no order among them matters).
local function affinity_cap(affinity)
  if redis.call('HLEN', affinity) <= entities_kept + 1 then return end  -- with "#m"
  local stored = redis.call('HGETALL', affinity)
  local counters, count = {}, 0
  for p = 1, #stored, 2 do
    local name = stored[p]
    if name ~= '#m' then
      counters[name] = (affinity_unpack(stored[p + 1]))
      count = count + 1
    end
  end
  while count > entities_kept do
    local weakest = math.huge
    for _, counter in pairs(counters) do
      if counter < weakest then weakest = counter end
    end
    local dropped = {}
    for name, counter in pairs(counters) do
      if counter == weakest then dropped[#dropped + 1] = name end
    end
    for _, name in ipairs(dropped) do counters[name] = nil end
    count = count - #dropped
    redis.call('HDEL', affinity, unpack(dropped))
  end
end
"""
)

# A session's affinities added into its user's hash when the storefront identifies it (`signals_app.identity`): the
# session's counters re-expressed against the user's epoch, the later of each category's times, the later latest
# event and latest item of interest, then the cap. The user's keys (a session's may live in another slot: the caller
# read them). KEYS: the user's hash, their recent-last key of the layout before "#m". ARGV: 1 entities kept, 2
# affinity half-life, 3 the session's epoch ('' when none), 4 its latest event, 5 the hash's ttl, 6 its latest item
# of interest ('' when none), then per entity: its key (or a NUL and its code), its counter (against the session's
# epoch), its time ('' when none). Returns how many entities came.
AFFINITY_MERGE_LUA = (
    """
local entities_kept, half_life = tonumber(ARGV[1]), tonumber(ARGV[2])
"""
    + AFFINITY_LUA
    + """
local affinity = KEYS[1]
affinity_convert(affinity)
local epoch, last, recent_last = affinity_meta_read(affinity)
local session_epoch, session_last = tonumber(ARGV[3]), tonumber(ARGV[4])
local names, fields = {}, {}
for p = 7, #ARGV, 3 do names[#names + 1] = ARGV[p] end
if session_epoch then
  if not epoch then epoch = session_epoch end
  local scale = 2 ^ ((session_epoch - epoch) / half_life)
  local codes = {}
  for i, entity in ipairs(names) do codes[i] = affinity_field(entity) end
  local stored = #codes > 0 and redis.call('HMGET', affinity, unpack(codes)) or {}
  for i, entity in ipairs(names) do
    local p = 7 + 3 * (i - 1)
    local counter, seen = affinity_unpack(stored[i])
    local other_seen = tonumber(ARGV[p + 2])
    if other_seen and (not seen or other_seen > seen) then seen = other_seen end
    fields[#fields + 1] = codes[i]
    fields[#fields + 1] = affinity_pack(is_category(entity) or seen ~= nil, counter + tonumber(ARGV[p + 1]) * scale,
                                        seen)
  end
  if session_last and (not last or session_last > last) then last = session_last end
end
-- The later latest item of interest: the user's (moved from its key of the layout before) or the session's.
recent_last = recent_last or tonumber(redis.call('GET', KEYS[2]))
local session_recent_last = tonumber(ARGV[6])
if session_recent_last and (not recent_last or session_recent_last > recent_last) then
  recent_last = session_recent_last
end
if not epoch and not recent_last then return 0 end
fields[#fields + 1] = '#m'
fields[#fields + 1] = affinity_meta_pack(epoch, last, recent_last)
affinity_hset(affinity, fields)
redis.call('DEL', KEYS[2])
affinity_cap(affinity)
redis.call('EXPIRE', affinity, ARGV[5])
return #names
"""
)
affinity_merge_script = ShaScript(AFFINITY_MERGE_LUA)


# What the ingest script and the apply script share: their common KEYS and ARGV, and one function per piece of
# online state, so that a late or imported event changes the state exactly as a live one does.
STATE_LUA = (
    """
-- KEYS: 1 decay epochs, 2 stream, 3 catalog entities, 4 item counters, 5..4+W trend keys, 5+W dedupe layout, then
-- the events' keys (first each event's D dedupe sets).
-- ARGV: 1 events, 2 affinity entities kept, 3 recent kept, 4 user state ttl, 5 session ttl, 6 affinity half-life,
-- 7 rebase after, 8 windows W, 9..8+W trend half-lives, 9+W now, 10+W cool-down items kept, 11+W cool-down seconds
-- kept, 12+W purchased items kept, then the dedupe's (state.dedupe): 13+W dedupe sets an event D, 14+W ids per
-- set, 15+W max shard bits, 16+W max levels, 17+W current generation, 18+W its end, 19+W its sets' expiry, 20+W
-- arrival, 21+W its layout, 22+W how many generations are checked C, then the C generations and their layouts;
-- then the script's own.
local events = tonumber(ARGV[1])
local recent_kept = tonumber(ARGV[3])
local state_ttl = tonumber(ARGV[4])
local affinity_half_life = tonumber(ARGV[6])
local rebase_after = tonumber(ARGV[7])
local windows = tonumber(ARGV[8])
local now = tonumber(ARGV[9 + windows])
local cooldown_kept, cooldown_seconds = tonumber(ARGV[10 + windows]), tonumber(ARGV[11 + windows])
local purchased_kept = tonumber(ARGV[12 + windows])
local entities_kept = tonumber(ARGV[2])
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
    + AFFINITY_LUA
    + DEDUPE_LUA
    + """
local dedupe_layout, dedupe_keys = KEYS[5 + windows], tonumber(ARGV[13 + windows])
local dedupe_expire_at = ARGV[19 + windows]
local own_args = 23 + windows + 2 * tonumber(ARGV[22 + windows])
local function dedupe_added(added)
  dedupe_grow(dedupe_layout, ARGV[17 + windows], ARGV[21 + windows], added, tonumber(ARGV[20 + windows]),
              tonumber(ARGV[18 + windows]), tonumber(ARGV[14 + windows]), tonumber(ARGV[15 + windows]),
              tonumber(ARGV[16 + windows]))
end
-- Idempotent (the later time wins), so a late hide still counts for a long cool-down. `ts`: the argument string.
local function cooldown_add(key, item, ts)
  redis.call('ZADD', key, 'GT', ts, item)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - cooldown_seconds)
  redis.call('ZREMRANGEBYRANK', key, 0, -cooldown_kept - 1)
  redis.call('EXPIRE', key, cooldown_seconds)
end
-- What the user bought (placements may leave it out), the latest purchased_kept; idempotent like the cool-down.
local function purchased_add(key, item, ts)
  redis.call('ZADD', key, 'GT', ts, item)
  redis.call('ZREMRANGEBYRANK', key, 0, -purchased_kept - 1)
  redis.call('EXPIRE', key, state_ttl)
end
-- The affinity hash lives state_ttl after the later of its latest event and its latest item of interest (the
-- values its "#m" now holds).
local function affinity_expire(affinity, last, recent_last)
  if recent_last and (not last or recent_last > last) then last = recent_last end
  if last then expire_after(affinity, last) end
end
-- The affinity hash's (epoch, latest event, latest item of interest): the last in "#m" (a key of its own in the
-- layouts before, `legacy`: moved on first use).
local function recent_last_get(affinity, legacy)
  affinity_convert(affinity)
  local epoch, affinity_last, last = affinity_meta_read(affinity)
  if last then return epoch, affinity_last, last end
  last = tonumber(redis.call('GET', legacy))
  if last then
    redis.call('HSET', affinity, '#m', affinity_meta_pack(epoch, affinity_last, last))
    redis.call('DEL', legacy)
    affinity_expire(affinity, affinity_last, last)
  end
  return epoch, affinity_last, last
end
-- The item goes to the front of the user's recent items (which start afresh after a gap longer than state_ttl).
local function recent_push(recent, legacy_last, affinity, item, ts)
  local epoch, affinity_last, last = recent_last_get(affinity, legacy_last)
  if last and ts - last > state_ttl then redis.call('DEL', recent) end
  if not last or ts > last then
    last = ts
    redis.call('HSET', affinity, '#m', affinity_meta_pack(epoch, affinity_last, ts))
  end
  redis.call('LREM', recent, 0, item)
  redis.call('LPUSH', recent, item)
  redis.call('LTRIM', recent, 0, recent_kept - 1)
  expire_after(recent, last)
  affinity_expire(affinity, affinity_last, last)
end
-- The item's counters and popularity windows (forward decay against each window's epoch).
local function popularity_add(item, weight, ts)
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
end
-- The user's decayed counter of each of the item's entities, and for its category the time of its latest event
-- (nothing for an item without entities): AFFINITY_LUA keeps the hash's layout.
local function affinity_add(affinity, item, weight, ts)
  local entities = redis.call('HGET', KEYS[3], item)
  if not entities then return end
  affinity_convert(affinity)
  local epoch, last, recent_last = affinity_meta_read(affinity)
  if last and ts - last > state_ttl then
    redis.call('DEL', affinity)  -- the latest item of interest stays: it is the recent items' (written below)
    last, epoch = nil, nil
  end
  if not epoch then
    epoch = ts
  elseif (ts - epoch) / affinity_half_life > affinity_rebase_after then
    affinity_rescale(affinity, 2 ^ (-(ts - epoch) / affinity_half_life))
    epoch = ts
  end
  local increment = weight * 2 ^ ((ts - epoch) / affinity_half_life)
  local names, fields_of = {}, {}
  for entity in string.gmatch(entities, '[^|]+') do
    names[#names + 1] = entity
    fields_of[#fields_of + 1] = affinity_field(entity)
  end
  local stored = redis.call('HMGET', affinity, unpack(fields_of))
  local counters, times, order, codes = {}, {}, {}, {}
  for i, entity in ipairs(names) do
    if counters[entity] == nil then  -- an entity listed twice counts twice, as offline
      order[#order + 1] = entity
      codes[#codes + 1] = fields_of[i]
      counters[entity], times[entity] = affinity_unpack(stored[i])
    end
    counters[entity] = counters[entity] + increment
    if is_category(entity) and (not times[entity] or ts > times[entity]) then times[entity] = ts end
  end
  if not last or ts > last then last = ts end
  local fields = {'#m', affinity_meta_pack(epoch, last, recent_last)}
  for i, entity in ipairs(order) do
    fields[#fields + 1] = codes[i]
    fields[#fields + 1] = affinity_pack(is_category(entity), counters[entity], times[entity])
  end
  redis.call('HSET', affinity, unpack(fields))
  affinity_cap(affinity)
  affinity_expire(affinity, last, recent_last)
end
"""
)

INGEST_SCRIPT = (
    STATE_LUA
    + """
-- One partition's share of a request. KEYS after the common ones, an event: D dedupe sets, then recent, session
-- items, affinity, placement counters, recent-last, cool-down, purchased. ARGV after the common ones: 12 values an
-- event: item, weight, marks interest, ts, payload, has session, late, is click in a placement, ctr half-life,
-- starts a cool-down (hide or skip), is a purchase, dedupe member. Returns "stale" (and writes nothing) when the
-- caller's dedupe layouts are not the stored ones.
if not dedupe_layout_current(dedupe_layout, 22 + windows) then return 'stale' end
local results = {}
local added = 0
for e = 0, events - 1 do
  local k = 5 + windows + (dedupe_keys + 7) * e
  local a = own_args - 1 + 12 * e
  local item, weight, ts = ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 4])
  if not dedupe_first(k + 1, dedupe_keys, ARGV[a + 12], dedupe_expire_at) then
    results[e + 1] = 0
  else
    results[e + 1] = 1
    added = added + 1
    k = k + dedupe_keys - 1  -- the event's other keys: k + 2 ...
    if item ~= '' and ARGV[a + 10] == '1' then cooldown_add(KEYS[k + 7], item, ARGV[a + 4]) end
    if item ~= '' and ARGV[a + 11] == '1' then purchased_add(KEYS[k + 8], item, ARGV[a + 4]) end
    -- Older than the dedupe window (late): maybe a resend we no longer remember, so the durable log decides:
    -- the consumer applies it (the apply script) once the log stored it as new.
    if ARGV[a + 7] ~= '1' then
      if item ~= '' and ARGV[a + 3] == '1' then
        recent_push(KEYS[k + 2], KEYS[k + 6], KEYS[k + 4], item, ts)
        if ARGV[a + 6] == '1' then
          redis.call('LREM', KEYS[k + 3], 0, item)
          redis.call('LPUSH', KEYS[k + 3], item)
          redis.call('LTRIM', KEYS[k + 3], 0, recent_kept - 1)
          redis.call('EXPIRE', KEYS[k + 3], ARGV[5])
        end
      end
      if item ~= '' and weight > 0 then
        popularity_add(item, weight, ts)
        affinity_add(KEYS[k + 4], item, weight, ts)
      end
      if item ~= '' and ARGV[a + 8] == '1' then
        local ctr_half_life = tonumber(ARGV[a + 9])
        packed_add(KEYS[k + 5], item, ts, {1, 0}, {ctr_half_life, ctr_half_life})
      end
    end
    redis.call('XADD', KEYS[2], '*', 'e', ARGV[a + 5])
  end
end
dedupe_added(added)
return results
"""
)

APPLY_SCRIPT = (
    STATE_LUA
    + """
-- Events the durable log stored as new that the ingest script did not apply (late ones, imported history), of one
-- partition, each user's in event-time order: the same updates as live, except the session items, and neither a
-- dedupe (the log did it) nor the stream. KEYS after the common ones, an event: D dedupe sets, then recent,
-- recent-last, affinity, placement counters, cool-down, purchased. ARGV after the common ones: the times the log
-- knows of the items in each user's recent items (JSON: recent key -> {item: time}), then 10 values an event: item,
-- weight, marks interest, ts, dedupe (an import's event within the dedupe window: skip it if the ingest script saw
-- it), is click in a placement, ctr half-life, starts a cool-down, is a purchase, dedupe member. Returns 1 for each
-- event applied, or "stale" (having written nothing) when the caller's dedupe layouts are not the stored ones.
if not dedupe_layout_current(dedupe_layout, 22 + windows) then return 'stale' end
local known_times = cjson.decode(ARGV[own_args])
-- An item older than the user's latest goes behind every item not known to be older: an item the log has no time
-- for arrived after the late event, so it is newer (anything that arrives live is at most the dedupe window old).
local function recent_insert(recent, legacy_last, affinity, item, ts, known)
  local _, _, last = recent_last_get(affinity, legacy_last)
  if not last or ts >= last then
    recent_push(recent, legacy_last, affinity, item, ts)
    known[item] = ts
    return
  end
  local listed = redis.call('LRANGE', recent, 0, -1)
  local pivot, present = nil, false
  for i = 1, #listed do
    local other = listed[i]
    if other == item then
      if not known[item] or known[item] >= ts then return end -- already placed by a later event
      present = true
    elseif not known[other] or known[other] > ts then
      pivot = other
    end
  end
  if present then redis.call('LREM', recent, 0, item) end
  if pivot then
    redis.call('LINSERT', recent, 'AFTER', pivot, item)
  else
    redis.call('LPUSH', recent, item)
  end
  redis.call('LTRIM', recent, 0, recent_kept - 1)
  known[item] = ts
  expire_after(recent, last)
end
local results = {}
local added = 0
for e = 0, events - 1 do
  local k = 5 + windows + (dedupe_keys + 6) * e
  local a = own_args + 10 * e
  local item, weight, ts = ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 4])
  if ARGV[a + 5] == '1' and not dedupe_first(k + 1, dedupe_keys, ARGV[a + 10], dedupe_expire_at) then
    results[e + 1] = 0
  else
    results[e + 1] = 1
    if ARGV[a + 5] == '1' then added = added + 1 end
    k = k + dedupe_keys - 1  -- the event's other keys: k + 2 ...
    if ARGV[a + 8] == '1' then cooldown_add(KEYS[k + 6], item, ARGV[a + 4]) end
    if ARGV[a + 9] == '1' then purchased_add(KEYS[k + 7], item, ARGV[a + 4]) end
    if ARGV[a + 3] == '1' then
      local known = known_times[KEYS[k + 2]]
      if not known then
        known = {}
        known_times[KEYS[k + 2]] = known
      end
      recent_insert(KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], item, ts, known)
    end
    if weight > 0 then
      popularity_add(item, weight, ts)
      affinity_add(KEYS[k + 4], item, weight, ts)
    end
    if ARGV[a + 6] == '1' then
      local ctr_half_life = tonumber(ARGV[a + 7])
      packed_add(KEYS[k + 5], item, ts, {1, 0}, {ctr_half_life, ctr_half_life})
    end
  end
end
dedupe_added(added)
return results
"""
)


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


def _common_keys(partition: int) -> list[str]:
    return [
        redis_keys.item_trend_epochs(partition),
        redis_keys.event_stream(partition),
        redis_keys.catalog_entities(partition),
        redis_keys.item_counters(partition),
        *(redis_keys.item_trend(partition, window) for window in TREND_WINDOWS),
        redis_keys.event_seen_layout(partition),
    ]


def _dedupe_args(layout: PartitionLayout, arrival: float, dedupe_keys: int) -> list[str | int]:
    generations = layout.generations
    return [
        dedupe_keys,
        dedupe.IDS_PER_SET,
        dedupe.MAX_SHARD_BITS,
        dedupe.MAX_LEVELS,
        generations.current,
        generations.current_end,
        generations.expire_at,
        repr(arrival),
        layout.current_levels,
        *layout.args(),
    ]


def _common_args(
    events: int, layout: PartitionLayout, arrival: float, dedupe_keys: int
) -> list[str | bytes | float | int]:
    return [
        events,
        settings.SIGNALS_AFFINITY_ENTITIES_KEPT,
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
        settings.SIGNALS_PURCHASED_ITEMS_KEPT,
        *_dedupe_args(layout, arrival, dedupe_keys),
    ]


def _is_stale(reply: object) -> bool:
    """The script refused the call (writing nothing): its dedupe layouts were not the stored ones."""
    return reply in (dedupe.STALE, dedupe.STALE.decode())


class IngestScript:
    """The ingest script, called by its SHA and reloaded after a Redis restart or failover."""

    def __init__(self) -> None:
        self.sha: str | None = None

    def load(self, client: redis.Redis) -> str:
        self.sha = str(client.script_load(INGEST_SCRIPT))
        return self.sha

    def queue(
        self,
        pipeline: redis.client.Pipeline,
        partition: int,
        events: Sequence[OnlineEvent],
        generations: Generations,
    ) -> None:
        """One script call for the events of one partition (their dedupe layouts fetched before)."""
        keys = _common_keys(partition)
        layout = dedupe.layouts.of(partition, generations)
        args: list[str | bytes | float | int] = []
        dedupe_keys = 0
        for online in events:
            event = online.event
            member, seen = layout.keys(event.event_id)
            dedupe_keys = len(seen)
            keys += [
                *seen,
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
                member,
            ]
        args = _common_args(len(events), layout, generations.arrival, dedupe_keys) + args
        assert self.sha is not None
        pipeline.evalsha(self.sha, len(keys), *keys, *args)

    def run(
        self,
        client: redis.Redis,
        events: Sequence[OnlineEvent],
        also: Callable[[redis.client.Pipeline], None] | None = None,
    ) -> list[EventOutcome]:
        """Apply the events in one round trip (script calls per partition): each event's outcome. A call's writes
        are atomic, so each event is applied or not as its call is; a reply that never came (a timeout, a dropped
        connection) leaves its events UNKNOWN. `also` may queue more commands on the same pipeline (their replies
        are ignored)."""
        if self.sha is None:
            self.load(client)
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
                self.queue(pipeline, partition, [events[index] for index in indexes], generations)
            if also is not None and attempt == 0:
                also(pipeline)
            try:
                # Connected before anything is sent: a Redis that cannot be reached got none of the events.
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
        self.script = ShaScript(APPLY_SCRIPT)

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

    @staticmethod
    def _call(
        partition: int,
        events: Sequence[LoggedEvent],
        known: dict[str, dict[str, float]],
        generations: Generations,
    ) -> tuple[list[str], list[str | bytes | float | int]]:
        keys = _common_keys(partition)
        recent_known = {
            redis_keys.user_recent_items(user_key): known.get(user_key, {})
            for user_key in {logged.event.user_key for logged in events}
        }
        args: list[str | bytes | float | int] = [orjson.dumps(recent_known)]
        layout = dedupe.layouts.of(partition, generations)
        dedupe_keys = 0
        for logged in events:
            event, kind = logged.event, logged.event_type
            member, seen = layout.keys(event.event_id)
            dedupe_keys = len(seen)
            keys += [
                *seen,
                redis_keys.user_recent_items(event.user_key),
                redis_keys.user_recent_last(event.user_key),
                redis_keys.user_affinity(event.user_key),
                redis_keys.placement_counters(partition, event.placement or "-"),
                redis_keys.user_cooldown(event.user_key),
                redis_keys.user_purchased(event.user_key),
            ]
            timestamp = event.occurred_at.timestamp()
            args += [
                event.item_id,
                kind.popularity_weight,
                "1" if kind.marks_interest else "0",
                repr(timestamp),
                "1" if logged.dedupe else "0",
                "1" if event.type == "click" and event.placement else "0",
                CTR_HALF_LIFE_SECONDS,
                "1" if event.type in COOLDOWN_EVENT_TYPES else "0",
                "1" if event.type == "purchase" else "0",
                member,
            ]
            if kind.marks_interest:  # what the next call of the same user must know
                items = known.setdefault(event.user_key, {})
                items[event.item_id] = max(items.get(event.item_id, timestamp), timestamp)
        common = _common_args(len(events), layout, generations.arrival, dedupe_keys)
        return keys, common + args


apply_script = ApplyScript()
