-- What the ingest script and the apply script share: their common KEYS and ARGV, and one function per piece of
-- online state, so that a late or imported event changes the state exactly as a live one does. After the fragments
-- packed_add.lua, affinity.lua and dedupe.lua.
-- KEYS after the named ones (`more_keys`): the W popularity windows' keys, then each event's (the script's EVENT_KEYS).
-- ARGV after the named ones (`more`): the W windows' half-lives, the C generations the dedupe checks and their
-- C layouts (`graph_app.state.dedupe`), then the script's own. `dedupe_keys`: how many dedupe sets an event has.
--! KEYS: trend_epochs stream catalog_entities item_counters dedupe_layout more_keys...
--! ARGV: events entities_kept recent_kept state_ttl session_ttl affinity_half_life rebase_after now cooldown_kept
--! ARGV: cooldown_seconds purchased_kept dedupe_keys ids_per_set max_shard_bits max_levels generation generation_end
--! ARGV: expire_at arrival current_levels windows checked more...
local events = tonumber(ARGV[{{ARGV.events}}])
local recent_kept = tonumber(ARGV[{{ARGV.recent_kept}}])
local state_ttl = tonumber(ARGV[{{ARGV.state_ttl}}])
local affinity_half_life = tonumber(ARGV[{{ARGV.affinity_half_life}}])
local rebase_after = tonumber(ARGV[{{ARGV.rebase_after}}])
local windows = tonumber(ARGV[{{ARGV.windows}}])
local now = tonumber(ARGV[{{ARGV.now}}])
local cooldown_kept = tonumber(ARGV[{{ARGV.cooldown_kept}}])
local cooldown_seconds = tonumber(ARGV[{{ARGV.cooldown_seconds}}])
local purchased_kept = tonumber(ARGV[{{ARGV.purchased_kept}}])
local entities_kept = tonumber(ARGV[{{ARGV.entities_kept}}])
local trend_epochs_key, item_counters = KEYS[{{KEYS.trend_epochs}}], KEYS[{{KEYS.item_counters}}]
-- The popularity window w's key is KEYS[trend_keys + w], its half-life ARGV[trend_half_lives_at + w].
local trend_keys, trend_half_lives_at = {{KEYS.more_keys}} - 1, {{ARGV.more}} - 1
-- Each event's keys start after first_event_key, its arguments after own_args (the script's own before them).
local first_event_key = trend_keys + windows
local checked = tonumber(ARGV[{{ARGV.checked}}])
local own_args = trend_half_lives_at + windows + 2 * checked + 1
-- User state lasts state_ttl after its latest event, by event time: a gap longer than that starts it afresh
-- (the offline materialization applies the same rule). Redis expiry only reclaims memory, a day at the least.
local function expire_after(key, last)
  redis.call('EXPIREAT', key, math.floor(math.max(last + state_ttl, now + 86400)))
end
local trend_epochs, trend_half_lives = {}, {}
for w = 1, windows do
  trend_epochs[w] = tonumber(redis.call('HGET', trend_epochs_key, KEYS[trend_keys + w]))
  trend_half_lives[w] = tonumber(ARGV[trend_half_lives_at + w])
end
local dedupe_layout, dedupe_keys = KEYS[{{KEYS.dedupe_layout}}], tonumber(ARGV[{{ARGV.dedupe_keys}}])
local dedupe_expire_at = ARGV[{{ARGV.expire_at}}]
-- The caller's dedupe layouts are the stored ones.
local function dedupe_current()
  return dedupe_layout_current(dedupe_layout, checked, trend_half_lives_at + windows)
end
local function dedupe_added(added)
  dedupe_grow(dedupe_layout, ARGV[{{ARGV.generation}}], ARGV[{{ARGV.current_levels}}], added,
              tonumber(ARGV[{{ARGV.arrival}}]), tonumber(ARGV[{{ARGV.generation_end}}]),
              tonumber(ARGV[{{ARGV.ids_per_set}}]), tonumber(ARGV[{{ARGV.max_shard_bits}}]),
              tonumber(ARGV[{{ARGV.max_levels}}]))
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
  packed_add(item_counters, item, ts, weights, trend_half_lives)
  for w = 1, windows do
    local key = KEYS[trend_keys + w]
    local half_life = trend_half_lives[w]
    local epoch = trend_epochs[w]
    if not epoch then
      epoch = ts
      trend_epochs[w] = epoch
      redis.call('HSET', trend_epochs_key, key, epoch)
    elseif (ts - epoch) / half_life > rebase_after then
      redis.call('ZUNIONSTORE', key, 1, key, 'WEIGHTS', 2 ^ (-(ts - epoch) / half_life))
      epoch = ts
      trend_epochs[w] = epoch
      redis.call('HSET', trend_epochs_key, key, epoch)
    end
    redis.call('ZINCRBY', key, weight * 2 ^ ((ts - epoch) / half_life), item)
  end
end
-- The user's decayed counter of each of the item's entities, and for its category the time of its latest event
-- (nothing for an item without entities): AFFINITY_LUA keeps the hash's layout.
local function affinity_add(affinity, item, weight, ts)
  local entities = redis.call('HGET', KEYS[{{KEYS.catalog_entities}}], item)
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
  affinity_cap(affinity, entities_kept)
  affinity_expire(affinity, last, recent_last)
end
