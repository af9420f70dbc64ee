"""Frequency caps and cool-downs, counted from logged impressions and enforced atomically in Redis (hot path: plain
Python over dataclasses, no ORM).

A request uses them in two steps:
1. Read, on the request's state round trip: `caps_queue` then `caps_decode` give a `CapState`, and
   `cap_block_reason` (or `caps_block_reasons` for many items) says which candidates the caps refuse now, so that
   the slate is chosen among the others.
2. `caps_enforce_and_record`: one script call re-checks every cap for the chosen items in order and records the
   accepted ones as impressions, atomically, so two concurrent requests of one user never exceed a cap. It is the
   authority; the read is a cheap, possibly slightly stale, forecast of it.

Redis layout, every key in the user's partition slot (`personalization.redis_keys`), so one script reaches all:
- `user_cap_counts` (hash): what was shown -> the times of its recent impressions, oldest first, as a MessagePack
  array (Lua's cmsgpack decodes it in one C call). Fields: "i:<item>", "c:<category>", "e:<entity>",
  "m:<campaign>", the same prefixed with "<placement>\\x1f" for caps that count one placement only, and
  "s:<placement>" for its slates (the times, then an array of their request ids). A field keeps only as many times
  as the largest cap counting it needs, so the script reads a few short values (HMGET of the fields of the call's
  items), never the user's whole history.
- `user_cap_touched` (sorted set): field -> last write; fields untouched for the retention window are deleted.
- `user_cap_blocks` (hash): "<cap signature>\\x1f<field>" -> until when that cap refuses it, written by the
  script whenever a count reaches its cap. The read path fetches only this (small) hash and the cool-downs.
- `user_cooldown` (sorted set): item -> time of the latest hide or skip, written by the ingest script
  (`graph_app.state.ingest`) in the event's own round trip.

A spec counts the impressions of every placement, or only of the placement being served (`per_placement`, for a
cap configured on one placement). Impressions are recorded only for what the call's specs count, so a cap that
counts every placement must be among every placement's specs (as a FrequencyCap without placement is). The
`placement` scope counts the placement's slates (requests), not its items. Windows slide: an impression counts
while `served_at > now - window_seconds`. An item a pin shows (`CapItem.pin_exempt`, see `surface_app.serving.rules`)
is counted by every cap but refused only by campaign and placement caps and the cool-down.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from graph_app.state.interface import IMPRESSION_LOG_LUA, ImpressionLogCall
from personalization import redis_keys
from personalization.redis_client import ShaScript, get_redis

logger = logging.getLogger(__name__)

# Scopes: the values of surface_app.models.FrequencyCap.Scope.
SCOPE_ITEM = "item"
SCOPE_CATEGORY = "category"
SCOPE_ENTITY = "entity"
SCOPE_CAMPAIGN = "campaign"
SCOPE_PLACEMENT = "placement"
SCOPE_COOLDOWN = "cooldown"
SCOPES = frozenset({SCOPE_ITEM, SCOPE_CATEGORY, SCOPE_ENTITY, SCOPE_CAMPAIGN, SCOPE_PLACEMENT, SCOPE_COOLDOWN})
# The caps a pin is exempt from unless it opts in: a campaign cap exists to cap pins, a placement cap caps the shelf.
PIN_EXEMPT_SCOPES = frozenset({SCOPE_ITEM, SCOPE_CATEGORY, SCOPE_ENTITY})
# How a counted field names what was shown, by scope.
_TAGS = {SCOPE_ITEM: "i:", SCOPE_CATEGORY: "c:", SCOPE_ENTITY: "e:", SCOPE_CAMPAIGN: "m:"}
SEPARATOR = "\x1f"
COOLDOWN_REASON = "cooldown"

ENFORCE_SCRIPT = """
-- KEYS: 1 counts, 2 touched, 3 blocks, 4 cool-down (see surface_app/serving/caps.py). ARGV (`_enforce_args`):
-- 1 now, 2 retention seconds, 3 request id, 4 placement, 5 at most this many accepted (0: no limit), 6 specs S,
-- then 5 values a spec: scope, max impressions, window seconds, counts this placement only ('1'), signature;
-- then the number K of items and their K ids; then the number E of items pins show, which item, category and
-- entity caps count but never refuse, and their E positions (1 to K); then, for each spec of item, category,
-- entity or campaign scope in order, the fields it counts: an item scope one field an item (K fields), the others
-- how many each item has (K numbers) then all of them. The caller names the fields: string and table work here
-- costs Redis's one thread as much as its commands do. Returns the ids of the items refused.
local now, retention = tonumber(ARGV[1]), tonumber(ARGV[2])
local request_id, placement, limit = ARGV[3], ARGV[4], tonumber(ARGV[5])
local spec_count = tonumber(ARGV[6])
local ids = 7 + 5 * spec_count
local item_count = tonumber(ARGV[ids])
-- Item k's id is ARGV[ids + k]. The fields of the first `limit` items are read at once, the spares' only if the
-- loop reaches them (seldom: the read path already left out what the caps refuse).
local upfront = limit > 0 and limit < item_count and limit or item_count
local old = now - retention
local slates_field = 's:' .. placement
local specs, counting, cooldown, slates_keep = {}, {}, nil, nil
local exempt_count, pinned = tonumber(ARGV[ids + item_count + 1]), {}
for n = 1, exempt_count do pinned[tonumber(ARGV[ids + item_count + 1 + n])] = true end
local a = ids + item_count + 2 + exempt_count
for s = 0, spec_count - 1 do
  local b = 7 + 5 * s
  local scope, max, window = ARGV[b], tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  if scope == 'cooldown' then
    if not cooldown or window > cooldown then cooldown = window end
  elseif scope == 'placement' then
    specs[#specs + 1] = {max = max, window = window, since = now - window, signature = ARGV[b + 4]}
    -- The slates field keeps one more, since this request's own slate may be among them.
    if not slates_keep or max + 1 > slates_keep then slates_keep = max + 1 end
  elseif scope == 'item' or scope == 'category' or scope == 'entity' or scope == 'campaign' then
    local spec = {
      tag = true, max = max, window = window, since = now - window, signature = ARGV[b + 4], counts = {},
      space = scope .. ARGV[b + 3], prefix = ARGV[b + 3] == '1' and #placement + 1 or 0,
      pins_pass = scope ~= 'campaign',
    }
    if scope == 'item' then
      -- Item k's field is ARGV[spec.first + k - 1].
      spec.first, spec.last = a, a + item_count - 1
      a = a + item_count
    else
      -- Item k's fields are ARGV[at[k]] to ARGV[at[k + 1] - 1].
      local at, name = {}, a + item_count
      for k = 1, item_count do
        at[k] = name
        name = name + tonumber(ARGV[a + k - 1])
      end
      at[item_count + 1] = name
      spec.at, spec.first, spec.last = at, at[1], name - 1
      a = name
    end
    specs[#specs + 1] = spec
    counting[#counting + 1] = spec
  end
end
-- A field keeps as many times as its largest cap needs: the specs of one scope and placement count the same
-- fields.
for _, spec in ipairs(counting) do
  spec.keep = spec.max
  for _, other in ipairs(counting) do
    if other.space == spec.space and other.max > spec.keep then spec.keep = other.max end
  end
end
-- The stored values (MessagePack: one C call decodes a field) of a spec's fields, by argument, read up to where
-- the loop got.
local function fetch(spec, upto)
  for start = (spec.fetched or spec.first - 1) + 1, upto, 200 do
    local got = redis.call('HMGET', KEYS[1], unpack(ARGV, start, math.min(start + 199, upto)))
    if not spec.values then
      spec.values = got
    else
      for n = 1, #got do spec.values[start - spec.first + n] = got[n] end
    end
  end
  spec.fetched = upto
end
for _, spec in ipairs(counting) do
  local upto = spec.at and spec.at[upfront + 1] - 1 or spec.first + upfront - 1
  if upto >= spec.first then fetch(spec, upto) end
end
-- field -> its impression times, oldest first, decoded when first counted. Times older than the retention
-- window are left out when a field is written back (no count reaches them: every window is within retention).
local entries = {}
local function load(spec, arg, name)
  if arg > (spec.fetched or 0) then fetch(spec, spec.last) end
  local value = spec.values[arg - spec.first + 1]
  local times = value and cmsgpack.unpack(value) or {}
  entries[name] = times
  return times
end
local function count(times, since)
  local n = 0
  for i = #times, 1, -1 do
    if times[i] <= since then break end
    n = n + 1
  end
  return n
end
local function record(times, requests, request)
  local last = #times
  local position = last + 1
  while position > 1 and times[position - 1] > now do position = position - 1 end
  if position > last then
    times[position] = now
    if requests then requests[position] = request end
  else
    table.insert(times, position, now)
    if requests then table.insert(requests, position, request) end
  end
end
-- The placement's slates: the times and their request ids, within retention.
local slates, slates_requests, slates_full = nil, nil, false
if slates_keep then
  local value = redis.call('HGET', KEYS[1], slates_field)
  local times, requests = {}, {}
  if value then times, requests = cmsgpack.unpack(value) end
  requests = requests or {}
  local first = 1
  while times[first] and times[first] <= old do first = first + 1 end
  slates, slates_requests = {}, {}
  for n = first, #times do
    slates[#slates + 1] = times[n]
    slates_requests[#slates_requests + 1] = requests[n]
  end
end
-- The placement's slates within since, but this request's.
local function count_slates(since)
  local n = 0
  for i = #slates, 1, -1 do
    if slates[i] <= since then break end
    if slates_requests[i] ~= request_id then n = n + 1 end
  end
  return n
end
for _, spec in ipairs(specs) do
  -- The placement's other slates: this request's counts once, whatever it recorded already.
  if not spec.tag and count_slates(spec.since) >= spec.max then slates_full = true end
end
-- Which items cool down: read for the same items as the fields, the spares' only if the loop reaches them.
local cooled, cooled_upto = {}, 0
local function cool(upto)
  for start = cooled_upto + 1, upto, 200 do
    local last = math.min(start + 199, upto)
    local hidden = redis.call('ZMSCORE', KEYS[4], unpack(ARGV, ids + start, ids + last))
    for n = 1, last - start + 1 do
      -- A missing member is false (a nil reply).
      cooled[start + n - 1] = hidden[n] and tonumber(hidden[n]) > now - cooldown or false
    end
  end
  cooled_upto = upto
end
if cooldown and not slates_full then cool(upfront) end
-- Each cap's count of a field within its window is counted once, then kept up to date as items are accepted.
-- The fields written: each once, with how many times it keeps.
local refused, accepted, dirty, written, keeps = {}, 0, {}, {}, {}
for k = 1, item_count do
  if limit > 0 and accepted >= limit then break end
  if cooldown and k > cooled_upto and not slates_full then cool(item_count) end
  local allowed, s = not slates_full and not cooled[k], 1
  while allowed and s <= #counting do
    local spec = counting[s]
    local counts, at, max = spec.counts, spec.at, spec.max
    -- A pin's item is counted (every field, for the recording below) but not refused.
    if pinned[k] and spec.pins_pass then max = math.huge end
    local from = at and at[k] or spec.first + k - 1
    for arg = from, at and at[k + 1] - 1 or from do
      local name = ARGV[arg]
      local n = counts[name]
      if not n then
        n = count(entries[name] or load(spec, arg, name), spec.since)
        counts[name] = n
      end
      if n >= max then
        allowed = false
        break
      end
    end
    s = s + 1
  end
  if allowed then
    accepted = accepted + 1
    for s = 1, #counting do
      local spec = counting[s]
      local counts, at = spec.counts, spec.at
      local from = at and at[k] or spec.first + k - 1
      for arg = from, at and at[k + 1] - 1 or from do
        -- Counted above: every field of an item allowed was.
        local name = ARGV[arg]
        counts[name] = counts[name] + 1
        -- A field two caps count gets the impression once.
        local previous = dirty[name]
        if previous ~= k then
          if not previous then
            written[#written + 1] = name
            keeps[#written] = spec.keep
          end
          dirty[name] = k
          record(entries[name])
        end
      end
    end
  else
    refused[#refused + 1] = ARGV[ids + k]
  end
end
local slates_written = false
if accepted > 0 and slates and count_slates(-math.huge) == #slates then
  record(slates, slates_requests, request_id)
  slates_written = true
end
-- Written back in one HSET and one ZADD a chunk of fields (a command costs more than the Lua around it): the
-- newest times within retention, as many as the field keeps.
local values, touched, single = {}, {}, nil
local function flush()
  if #values > 0 then
    redis.call('HSET', KEYS[1], unpack(values))
    redis.call('ZADD', KEYS[2], unpack(touched))
    values, touched = {}, {}
  end
end
local function write(name, times, keep, requests)
  local last = #times
  local from = math.max(1, last - keep + 1)
  while from <= last and times[from] <= old do from = from + 1 end
  if from > 1 then
    local kept_times, kept_requests = {}, requests and {}
    for n = from, last do
      kept_times[#kept_times + 1] = times[n]
      if requests then kept_requests[#kept_requests + 1] = requests[n] end
    end
    times, requests = kept_times, kept_requests
  end
  values[#values + 1] = name
  if requests then
    values[#values + 1] = cmsgpack.pack(times, requests)
  elseif #times == 1 and times[1] == now then
    -- This call's impression alone (a first one, mostly): the same value for every such field.
    single = single or cmsgpack.pack(times)
    values[#values + 1] = single
  else
    values[#values + 1] = cmsgpack.pack(times)
  end
  touched[#touched + 1] = ARGV[1]
  touched[#touched + 1] = name
  if #values >= 400 then flush() end
end
for n, name in ipairs(written) do write(name, entries[name], keeps[n]) end
if slates_written then write(slates_field, slates, slates_keep, slates_requests) end
flush()
-- What each cap refuses from now on, and until when (its max-th newest impression leaves the window).
local blocks = {}
local function block(spec, dim, times)
  if count(times, spec.since) >= spec.max then
    blocks[#blocks + 1] = spec.signature .. '\\31' .. dim
    blocks[#blocks + 1] = string.format('%.17g', times[#times - spec.max + 1] + spec.window)
  end
end
for _, spec in ipairs(specs) do
  if spec.tag then
    for name, n in pairs(spec.counts) do
      if n >= spec.max then block(spec, string.sub(name, spec.prefix + 1), entries[name]) end
    end
  else
    block(spec, slates_field, slates)
  end
end
for start = 1, #blocks, 400 do
  redis.call('HSET', KEYS[3], unpack(blocks, start, math.min(start + 399, #blocks)))
end
if #written > 0 or slates_written or #blocks > 0 then
  -- Fields and blocks that are over: at most a bounded number a call, so a call stays short.
  local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', string.format('%.17g', old), 'LIMIT', 0, 100)
  if #stale > 0 then
    redis.call('HDEL', KEYS[1], unpack(stale))
    redis.call('ZREM', KEYS[2], unpack(stale))
  end
  if redis.call('HLEN', KEYS[3]) > 32 then
    -- The times alone first (half the reply): most calls find none over, and then read no names.
    local untils, over = redis.call('HVALS', KEYS[3]), false
    for n = 1, #untils do
      if tonumber(untils[n]) <= now then
        over = true
        break
      end
    end
    if over then
      local all, gone = redis.call('HGETALL', KEYS[3]), {}
      for n = 1, #all, 2 do
        if tonumber(all[n + 1]) <= now then gone[#gone + 1] = all[n] end
      end
      for start = 1, #gone, 400 do
        redis.call('HDEL', KEYS[3], unpack(gone, start, math.min(start + 399, #gone)))
      end
    end
  end
  local ttl = math.ceil(retention)
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
  redis.call('EXPIRE', KEYS[3], ttl)
end
return refused
"""

# The enforce script that also logs the slate's impressions (`graph_app.state.impressions`) when it refused
# nothing: one call and one round trip fewer a request. KEYS 5 and 6, and ARGV after the fields:
# `impression_log_call`'s.
ENFORCE_AND_LOG_SCRIPT = (
    IMPRESSION_LOG_LUA
    + ENFORCE_SCRIPT.replace(
        "-- A field keeps as many times as its largest cap needs",
        "local log_at = a\n-- A field keeps as many times as its largest cap needs",
        1,
    ).removesuffix("return refused\n")
    + """if #refused == 0 and ARGV[log_at] then log_impressions(KEYS[5], KEYS[6], log_at) end
return refused
"""
)


@dataclass(frozen=True, slots=True)
class CapSpec:
    """One frequency cap as serving applies it (compiled from a `FrequencyCap` row). A cool-down uses only
    `window_seconds`."""

    scope: str
    max_impressions: int
    window_seconds: int
    name: str
    # Count only the impressions of the placement being served (a cap configured on one placement), not of all.
    per_placement: bool = False


@dataclass(frozen=True, slots=True)
class CapItem:
    """What the caps need to know about a candidate. Entities as keys like "brand:acme"; "" means none."""

    item_id: str
    category: str = ""
    entities: tuple[str, ...] = ()
    campaign: str = ""
    # Shown by a pin that does not opt in to caps: caps of PIN_EXEMPT_SCOPES count it but do not refuse it.
    pin_exempt: bool = False


# A compiled spec: its scope, the values it refuses (None: everything), the reason to give, and whether a
# pin_exempt item passes it.
_Check = tuple[str, frozenset[str] | None, str, bool]


@dataclass
class CapState:
    """What the caps refuse for a user at `now` (see `caps_decode`)."""

    now: float
    # cap signature -> the fields it refuses now ("i:<item>", "c:<category>", ..., "s:<placement>").
    blocks: dict[str, set[str]]
    # item id -> time of the latest hide or skip.
    cooldown: dict[str, float]
    # (id of the specs list, placement) -> (the list, its checks): specs are compiled once per request.
    _compiled: dict[tuple[int, str], tuple[Sequence[CapSpec], list[_Check]]] = field(default_factory=dict, repr=False)


EMPTY_REPLIES: tuple[dict[bytes, bytes], list[Any]] = ({}, [])


def cap_signature(spec: CapSpec, placement: str) -> str:
    """What identifies a cap's counting in Redis: a changed limit or window starts afresh instead of reusing the
    old cap's blocks (the counts themselves are shared)."""
    signature = f"{spec.scope}/{spec.max_impressions}/{spec.window_seconds}"
    return f"{signature}/{placement}" if spec.per_placement and spec.scope != SCOPE_PLACEMENT else signature


def caps_horizon(specs: Sequence[CapSpec]) -> int:
    """The longest window of the specs (0 when there is none): the read horizon for `caps_queue`."""
    return max((spec.window_seconds for spec in specs), default=0)


def caps_queue(pipeline: redis.client.Pipeline, *, user_key: str, now: float, horizon_seconds: int) -> None:
    """Queue the two reads `caps_decode` needs: what the user's caps refuse (a small hash) and the hides and skips
    within `horizon_seconds`. Queue nothing when no spec applies (and use EMPTY_REPLIES, or skip the caps)."""
    pipeline.hgetall(redis_keys.user_cap_blocks(user_key))
    pipeline.zrangebyscore(redis_keys.user_cooldown(user_key), f"({now - horizon_seconds!r}", "+inf", withscores=True)


def caps_decode(replies: Sequence[Any], *, now: float) -> CapState:
    """The two replies of `caps_queue` (or EMPTY_REPLIES) as a CapState."""
    blocked, hidden = replies
    blocks: dict[str, set[str]] = {}
    for name, until in blocked.items():
        if float(until) > now:
            signature, _, what = name.decode().partition(SEPARATOR)
            blocks.setdefault(signature, set()).add(what)
    cooldown = {item.decode(): float(hidden_at) for item, hidden_at in hidden}
    return CapState(now=now, blocks=blocks, cooldown=cooldown)


def _compile(state: CapState, specs: Sequence[CapSpec], placement: str) -> list[_Check]:
    """What each spec refuses now; specs that refuse nothing are left out."""
    checks: list[_Check] = []
    for spec in specs:
        if spec.scope == SCOPE_COOLDOWN:
            since = state.now - spec.window_seconds
            hidden = frozenset(item for item, hidden_at in state.cooldown.items() if hidden_at > since)
            if hidden:
                checks.append((SCOPE_ITEM, hidden, COOLDOWN_REASON, False))
            continue
        blocked = state.blocks.get(cap_signature(spec, placement))
        if not blocked:
            continue
        reason = f"cap:{spec.name}"
        if spec.scope == SCOPE_PLACEMENT:
            if f"s:{placement}" in blocked:
                checks.append((SCOPE_PLACEMENT, None, reason, False))
            continue
        tag = _TAGS.get(spec.scope)
        if tag is None:
            logger.warning("surface.cap_scope_unknown", extra={"cap": spec.name, "scope": spec.scope})
            continue
        values = frozenset(what[2:] for what in blocked if what.startswith(tag))
        if values:
            checks.append((spec.scope, values, reason, spec.scope in PIN_EXEMPT_SCOPES))
    return checks


def _checks(state: CapState, specs: Sequence[CapSpec], placement: str) -> list[_Check]:
    key = (id(specs), placement)
    compiled = state._compiled.get(key)
    if compiled is None or compiled[0] is not specs:
        compiled = (specs, _compile(state, specs, placement))
        state._compiled[key] = compiled  # holds the list, so its id is not reused while the state lives
    return compiled[1]


def _reason(checks: list[_Check], item: CapItem) -> str | None:
    for scope, blocked, reason, pins_pass in checks:
        if pins_pass and item.pin_exempt:
            continue
        if blocked is None:
            return reason
        if scope == SCOPE_ITEM:
            if item.item_id in blocked:
                return reason
        elif scope == SCOPE_CATEGORY:
            if item.category in blocked:
                return reason
        elif scope == SCOPE_CAMPAIGN:
            if item.campaign in blocked:
                return reason
        elif not blocked.isdisjoint(item.entities):
            return reason
    return None


def cap_block_reason(state: CapState, specs: Sequence[CapSpec], item: CapItem, placement: str) -> str | None:
    """Why the item may not be shown in the placement now: "cap:<name>" (the first spec, in order, that refuses
    it) or "cooldown"; None when it may. Compiles the specs once per state (pass the same list each time)."""
    if not specs:
        return None
    return _reason(_checks(state, specs, placement), item)


def caps_block_reasons(
    state: CapState, specs: Sequence[CapSpec], items: Sequence[CapItem], placement: str
) -> dict[str, str]:
    """item id -> why it may not be shown, for the items the caps refuse (see `cap_block_reason`)."""
    if not specs:
        return {}
    checks = _checks(state, specs, placement)
    if not checks:
        return {}
    reasons: dict[str, str] = {}
    for item in items:
        reason = _reason(checks, item)
        if reason is not None:
            reasons[item.item_id] = reason
    return reasons


enforce_script = ShaScript(ENFORCE_SCRIPT)
enforce_and_log_script = ShaScript(ENFORCE_AND_LOG_SCRIPT)


def _counted_values(item: CapItem, tag: str) -> list[str]:
    """What a category, campaign or entity cap counts of an item: no empty category or campaign; the entities
    split on the separator (even within one), empty ones left out and repeats kept (as the script always did)."""
    if tag == "c:":
        return [item.category] if item.category else []
    if tag == "m:":
        return [item.campaign] if item.campaign else []
    return [entity for entity in SEPARATOR.join(item.entities).split(SEPARATOR) if entity]


def _enforce_args(
    *,
    placement: str,
    request_id: str,
    items: list[CapItem],
    specs: list[CapSpec],
    now: float,
    limit: int | None,
    retention_seconds: int | None,
) -> list[str | int | float]:
    """The enforce script's ARGV (see its header). The counted fields are named here rather than in the script:
    string work costs the app's processes less than Redis's one thread."""
    retention = max(caps_horizon(specs), retention_seconds or 0)
    args: list[str | int | float] = [repr(now), retention, request_id, placement, limit or 0, len(specs)]
    fields: list[str | int | float] = []
    for spec in specs:
        args += [
            spec.scope, spec.max_impressions, spec.window_seconds, "1" if spec.per_placement else "0",
            cap_signature(spec, placement),
        ]  # fmt: skip
        tag = _TAGS.get(spec.scope)
        if tag is None:
            continue
        head = f"{placement}{SEPARATOR}{tag}" if spec.per_placement else tag
        if spec.scope == SCOPE_ITEM:
            fields += [f"{head}{item.item_id}" for item in items]
        else:
            names = [[f"{head}{value}" for value in _counted_values(item, tag)] for item in items]
            fields += [len(item_names) for item_names in names]
            fields += [name for item_names in names for name in item_names]
    exempt = [position for position, item in enumerate(items, start=1) if item.pin_exempt]
    return [*args, len(items), *(item.item_id for item in items), len(exempt), *exempt, *fields]


def caps_enforce_and_record(
    *,
    user_key: str,
    placement: str,
    request_id: str,
    items: list[CapItem],
    specs: list[CapSpec],
    now: float,
    limit: int | None = None,
    retention_seconds: int | None = None,
) -> list[str]:
    """Atomically, in one script call: re-check every cap for each item in order (counting the items accepted
    before it in this call), record the accepted ones as impressions at `now`, and return the ids of the items
    refused.

    limit: accept at most this many (the slate's size): pass spare candidates after the slate's items and the
    first refused ones are replaced; items after the limit is reached are neither recorded nor refused.
    retention_seconds: how long counts are kept, the longest window of any cap of any placement (default: the
    longest of `specs`), so that a shorter cap elsewhere does not drop what a longer one counts.
    Raises redis.RedisError when Redis fails (the caller degrades). No spec: no Redis call, nothing refused."""
    if not specs or not items:
        return []
    args = _enforce_args(
        placement=placement,
        request_id=request_id,
        items=items,
        specs=specs,
        now=now,
        limit=limit,
        retention_seconds=retention_seconds,
    )
    reply = cast(list[bytes], enforce_script.call(get_redis(), _enforce_keys(user_key), args))
    return caps_refused(reply, user_key=user_key, placement=placement, request_id=request_id)


def _enforce_keys(user_key: str) -> list[str]:
    return [
        redis_keys.user_cap_counts(user_key),
        redis_keys.user_cap_touched(user_key),
        redis_keys.user_cap_blocks(user_key),
        redis_keys.user_cooldown(user_key),
    ]


def caps_enforce_queue(
    pipeline: redis.client.Pipeline,
    *,
    user_key: str,
    placement: str,
    request_id: str,
    items: list[CapItem],
    specs: list[CapSpec],
    now: float,
    limit: int,
    retention_seconds: int | None,
    impression: ImpressionLogCall,
) -> None:
    """Queue on the caller's pipeline what `caps_enforce_and_record` does, plus the slate's impression log
    (`impression`: `impression_log_call`'s keys and arguments) when the call refuses nothing: the caller then
    serves the slate as offered, `limit` items; otherwise it logs the slate it serves itself. `caps_refused` reads
    the reply; execute with `script_pipeline_execute(..., enforce_and_log_script)`."""
    args = _enforce_args(
        placement=placement, request_id=request_id, items=items, specs=specs, now=now, limit=limit,
        retention_seconds=retention_seconds,
    )  # fmt: skip
    log_keys, log_args = impression
    enforce_and_log_script.queue(get_redis(), pipeline, [*_enforce_keys(user_key), *log_keys], [*args, *log_args])


def caps_refused(reply: list[bytes], *, user_key: str, placement: str, request_id: str) -> list[str]:
    """The items an enforce call refused, from its reply."""
    refused = [item_id.decode() for item_id in reply]
    if refused:
        logger.info(
            "surface.cap_hit",
            extra={"user_key": user_key, "placement": placement, "request_id": request_id, "refused": len(refused)},
        )
    return refused
