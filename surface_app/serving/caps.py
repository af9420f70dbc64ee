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
  (`signals_app.online_state`) in the event's own round trip.

A spec counts the impressions of every placement, or only of the placement being served (`per_placement`, for a
cap configured on one placement). Impressions are recorded only for what the call's specs count, so a cap that
counts every placement must be among every placement's specs (as a FrequencyCap without placement is). The
`placement` scope counts the placement's slates (requests), not its items. Windows slide: an impression counts
while `served_at > now - window_seconds`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis
from redis.exceptions import NoScriptError

from personalization import redis_keys
from personalization.redis_client import get_redis

logger = logging.getLogger(__name__)

# Scopes: the values of surface_app.models.FrequencyCap.Scope.
SCOPE_ITEM = "item"
SCOPE_CATEGORY = "category"
SCOPE_ENTITY = "entity"
SCOPE_CAMPAIGN = "campaign"
SCOPE_PLACEMENT = "placement"
SCOPE_COOLDOWN = "cooldown"
SCOPES = frozenset({SCOPE_ITEM, SCOPE_CATEGORY, SCOPE_ENTITY, SCOPE_CAMPAIGN, SCOPE_PLACEMENT, SCOPE_COOLDOWN})
# How a counted field names what was shown, by scope.
_TAGS = {SCOPE_ITEM: "i:", SCOPE_CATEGORY: "c:", SCOPE_ENTITY: "e:", SCOPE_CAMPAIGN: "m:"}
SEPARATOR = "\x1f"
COOLDOWN_REASON = "cooldown"

ENFORCE_SCRIPT = """
-- KEYS: 1 counts, 2 touched, 3 blocks, 4 cool-down (see surface_app/serving/caps.py). ARGV: 1 now, 2 retention
-- seconds, 3 request id, 4 placement, 5 at most this many accepted (0: no limit), 6 specs S, then 5 values a
-- spec: scope, max impressions, window seconds, counts this placement only ('1'), signature; then 4 values an
-- item: id, category, campaign, entities joined by \\31. Returns the ids of the items refused.
local now, retention = tonumber(ARGV[1]), tonumber(ARGV[2])
local request_id, placement, limit = ARGV[3], ARGV[4], tonumber(ARGV[5])
local spec_count = tonumber(ARGV[6])
local tags = {item = 'i:', category = 'c:', entity = 'e:', campaign = 'm:'}
local slates_field = 's:' .. placement
local specs, cooldown, has_slates = {}, nil, false
for s = 0, spec_count - 1 do
  local b = 7 + 5 * s
  local scope, window = ARGV[b], tonumber(ARGV[b + 2])
  if scope == 'cooldown' then
    if not cooldown or window > cooldown then cooldown = window end
  elseif scope == 'placement' or tags[scope] then
    specs[#specs + 1] = {
      scope = scope, tag = tags[scope], max = tonumber(ARGV[b + 1]), window = window, since = now - window,
      prefix = ARGV[b + 3] == '1' and (placement .. '\\31') or '', signature = ARGV[b + 4], counts = {},
    }
    if scope == 'placement' then has_slates = true end
  end
end
local items = {}
for i = 7 + 5 * spec_count, #ARGV, 4 do
  local dims = {'i:' .. ARGV[i]}
  if ARGV[i + 1] ~= '' then dims[#dims + 1] = 'c:' .. ARGV[i + 1] end
  if ARGV[i + 2] ~= '' then dims[#dims + 1] = 'm:' .. ARGV[i + 2] end
  for entity in string.gmatch(ARGV[i + 3], '[^\\31]+') do dims[#dims + 1] = 'e:' .. entity end
  items[#items + 1] = {id = ARGV[i], dims = dims}
end
-- The fields this call counts, and how many times each keeps: as many as its largest cap needs (the slates one
-- more, since this request's own slate may be among them).
local fields, keep = {}, {}
local function need(name, kept)
  if not keep[name] then
    fields[#fields + 1] = name
    keep[name] = kept
  elseif kept > keep[name] then
    keep[name] = kept
  end
end
-- Each item's fields, by cap (built once: string work costs more than the counting).
for _, item in ipairs(items) do item.fields = {} end
for s, spec in ipairs(specs) do
  if spec.tag then
    for _, item in ipairs(items) do
      local names = {}
      for _, dim in ipairs(item.dims) do
        if string.sub(dim, 1, 2) == spec.tag then
          names[#names + 1] = spec.prefix .. dim
          need(names[#names], spec.max)
        end
      end
      item.fields[s] = names
    end
  else
    need(slates_field, spec.max + 1)
  end
end
-- field -> {t = impression times, oldest first, within the retention window; r = their request ids (slates)}.
-- Stored as MessagePack (one C call decodes a field).
local entries = {}
for start = 1, #fields, 200 do
  local values = redis.call('HMGET', KEYS[1], unpack(fields, start, math.min(start + 199, #fields)))
  for f, value in ipairs(values) do
    local name = fields[start + f - 1]
    local times, requests = {}, nil
    if value then times, requests = cmsgpack.unpack(value) end
    local first = 1
    while times[first] and times[first] <= now - retention do first = first + 1 end
    if first > 1 then
      local kept_times, kept_requests = {}, requests and {}
      for n = first, #times do
        kept_times[#kept_times + 1] = times[n]
        if requests then kept_requests[#kept_requests + 1] = requests[n] end
      end
      times, requests = kept_times, kept_requests
    end
    entries[name] = {t = times, r = requests or (name == slates_field and {}) or nil}
  end
end
local function count(list, since, except)
  local n = 0
  for i = #list.t, 1, -1 do
    if list.t[i] <= since then break end
    if not except or list.r[i] ~= except then n = n + 1 end
  end
  return n
end
local function record(list, request)
  local position = #list.t + 1
  while position > 1 and list.t[position - 1] > now do position = position - 1 end
  table.insert(list.t, position, now)
  if list.r then table.insert(list.r, position, request) end
end
-- Each cap's count of a field within its window, counted once, then kept up to date as items are accepted.
local function counted(spec, name)
  local n = spec.counts[name]
  if not n then
    n = count(entries[name], spec.since)
    spec.counts[name] = n
  end
  return n
end
local slates_full = false
for _, spec in ipairs(specs) do
  -- The placement's other slates: this request's counts once, whatever it recorded already.
  if not spec.tag and count(entries[slates_field], spec.since, request_id) >= spec.max then slates_full = true end
end
if cooldown and not slates_full then
  for start = 1, #items, 200 do
    local ids = {}
    for n = start, math.min(start + 199, #items) do ids[#ids + 1] = items[n].id end
    local hidden = redis.call('ZMSCORE', KEYS[4], unpack(ids))
    for n = 1, #ids do
      -- A missing member is false (a nil reply).
      items[start + n - 1].cooled = hidden[n] and tonumber(hidden[n]) > now - cooldown or false
    end
  end
end
local refused, accepted, dirty = {}, 0, {}
for _, item in ipairs(items) do
  if limit > 0 and accepted >= limit then break end
  local allowed = not slates_full and not item.cooled
  for s, spec in ipairs(specs) do
    if not allowed then break end
    if spec.tag then
      for _, name in ipairs(item.fields[s]) do
        if counted(spec, name) >= spec.max then
          allowed = false
          break
        end
      end
    end
  end
  if allowed then
    accepted = accepted + 1
    for s, spec in ipairs(specs) do
      if spec.tag then
        for _, name in ipairs(item.fields[s]) do
          spec.counts[name] = counted(spec, name) + 1
          -- A field two caps count gets the impression once.
          if dirty[name] ~= item then
            dirty[name] = item
            record(entries[name])
          end
        end
      end
    end
  else
    refused[#refused + 1] = item.id
  end
end
if accepted > 0 and has_slates then
  local slates = entries[slates_field]
  if count(slates, -math.huge, request_id) == #slates.t then
    record(slates, request_id)
    dirty[slates_field] = true
  end
end
-- Written back in one HSET and one ZADD a chunk of fields (a command costs more than the Lua around it).
local values, touched = {}, {}
local function flush()
  if #values > 0 then
    redis.call('HSET', KEYS[1], unpack(values))
    redis.call('ZADD', KEYS[2], unpack(touched))
    values, touched = {}, {}
  end
end
for name in pairs(dirty) do
  local list = entries[name]
  local times, requests = list.t, list.r
  if #times > keep[name] then
    times, requests = {}, list.r and {}
    for n = #list.t - keep[name] + 1, #list.t do
      times[#times + 1] = list.t[n]
      if requests then requests[#requests + 1] = list.r[n] end
    end
  end
  values[#values + 1] = name
  values[#values + 1] = requests and cmsgpack.pack(times, requests) or cmsgpack.pack(times)
  touched[#touched + 1] = ARGV[1]
  touched[#touched + 1] = name
  if #values >= 400 then flush() end
end
flush()
-- What each cap refuses from now on, and until when (its max-th newest impression leaves the window).
local blocks = {}
local function block(spec, dim, list)
  if count(list, spec.since) >= spec.max then
    blocks[#blocks + 1] = spec.signature .. '\\31' .. dim
    blocks[#blocks + 1] = string.format('%.17g', list.t[#list.t - spec.max + 1] + spec.window)
  end
end
for _, spec in ipairs(specs) do
  if spec.tag then
    for name, n in pairs(spec.counts) do
      if n >= spec.max then block(spec, string.sub(name, #spec.prefix + 1), entries[name]) end
    end
  else
    block(spec, slates_field, entries[slates_field])
  end
end
for start = 1, #blocks, 400 do
  redis.call('HSET', KEYS[3], unpack(blocks, start, math.min(start + 399, #blocks)))
end
if next(dirty) or #blocks > 0 then
  -- Fields and blocks that are over: at most a bounded number a call, so a call stays short.
  local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', string.format('%.17g', now - retention), 'LIMIT', 0, 100)
  if #stale > 0 then
    redis.call('HDEL', KEYS[1], unpack(stale))
    redis.call('ZREM', KEYS[2], unpack(stale))
  end
  if redis.call('HLEN', KEYS[3]) > 32 then
    local all = redis.call('HGETALL', KEYS[3])
    for n = 1, #all, 2 do
      if tonumber(all[n + 1]) <= now then redis.call('HDEL', KEYS[3], all[n]) end
    end
  end
  local ttl = math.ceil(retention)
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
  redis.call('EXPIRE', KEYS[3], ttl)
end
return refused
"""


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


# A compiled spec: its scope, the values it refuses (None: everything), and the reason to give.
_Check = tuple[str, frozenset[str] | None, str]


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
                checks.append((SCOPE_ITEM, hidden, COOLDOWN_REASON))
            continue
        blocked = state.blocks.get(cap_signature(spec, placement))
        if not blocked:
            continue
        reason = f"cap:{spec.name}"
        if spec.scope == SCOPE_PLACEMENT:
            if f"s:{placement}" in blocked:
                checks.append((SCOPE_PLACEMENT, None, reason))
            continue
        tag = _TAGS.get(spec.scope)
        if tag is None:
            logger.warning("surface.cap_scope_unknown", extra={"cap": spec.name, "scope": spec.scope})
            continue
        values = frozenset(what[2:] for what in blocked if what.startswith(tag))
        if values:
            checks.append((spec.scope, values, reason))
    return checks


def _checks(state: CapState, specs: Sequence[CapSpec], placement: str) -> list[_Check]:
    key = (id(specs), placement)
    compiled = state._compiled.get(key)
    if compiled is None or compiled[0] is not specs:
        compiled = (specs, _compile(state, specs, placement))
        state._compiled[key] = compiled  # holds the list, so its id is not reused while the state lives
    return compiled[1]


def _reason(checks: list[_Check], item: CapItem) -> str | None:
    for scope, blocked, reason in checks:
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


class EnforceScript:
    """The enforce script, called by its SHA and loaded again after a Redis restart or failover."""

    def __init__(self) -> None:
        self.sha: str | None = None

    def call(self, client: redis.Redis, keys: list[str], args: list[str | int | float]) -> list[str]:
        for attempt in range(2):
            if self.sha is None:
                self.sha = str(client.script_load(ENFORCE_SCRIPT))
            try:
                reply = cast(list[bytes], client.evalsha(self.sha, len(keys), *keys, *args))
            except NoScriptError:
                # Nothing ran: safe to load it again and retry once.
                self.sha = None
                if attempt:
                    raise
                continue
            return [item_id.decode() for item_id in reply]
        raise AssertionError("unreachable")


enforce_script = EnforceScript()


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
    retention = max(caps_horizon(specs), retention_seconds or 0)
    args: list[str | int | float] = [repr(now), retention, request_id, placement, limit or 0, len(specs)]
    for spec in specs:
        args += [
            spec.scope, spec.max_impressions, spec.window_seconds, "1" if spec.per_placement else "0",
            cap_signature(spec, placement),
        ]  # fmt: skip
    for item in items:
        args += [item.item_id, item.category, item.campaign, SEPARATOR.join(item.entities)]
    keys = [
        redis_keys.user_cap_counts(user_key),
        redis_keys.user_cap_touched(user_key),
        redis_keys.user_cap_blocks(user_key),
        redis_keys.user_cooldown(user_key),
    ]
    refused = enforce_script.call(get_redis(), keys, args)
    if refused:
        logger.info(
            "surface.cap_hit",
            extra={"user_key": user_key, "placement": placement, "request_id": request_id, "refused": len(refused)},
        )
    return refused
