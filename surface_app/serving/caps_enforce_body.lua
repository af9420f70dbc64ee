-- Frequency caps and cool-downs enforced and recorded atomically (`surface_app.serving.caps`): what the script
-- computes up to `refused`, the ids of the items refused; caps_enforce.lua returns them, caps_enforce_and_log.lua
-- logs the slate's impressions first when it refused nothing.
-- KEYS: the user's cap counts, fields touched by time, blocks (what each cap refuses until when), cool-down set;
-- `log_keys`: the impression log's (empty when not logging). ARGV: `limit` at most this many accepted (0: no limit);
-- then (`more`) a SPEC record a spec (`this_placement`: '1' when it counts this placement only); then the number K
-- of items and their K ids; then the number E of items pins show, which item, category and entity caps count but
-- never refuse, and their E positions (1 to K); then, for each spec of item, category, entity or campaign scope in
-- order, the fields it counts: an item scope one field an item (K fields), the others how many each item has (K
-- numbers) then all of them; then, when logging, an IMPRESSION record (impression_log.lua). The caller names the
-- fields: string and table work here costs Redis's one thread as much as its commands do.
--! KEYS: counts touched blocks cooldown log_keys...
--! ARGV: now retention request_id placement limit spec_count more...
--! RECORD SPEC: scope max_impressions window_seconds this_placement signature
local now, retention = tonumber(ARGV[{{ARGV.now}}]), tonumber(ARGV[{{ARGV.retention}}])
local request_id, placement = ARGV[{{ARGV.request_id}}], ARGV[{{ARGV.placement}}]
local limit = tonumber(ARGV[{{ARGV.limit}}])
local spec_count = tonumber(ARGV[{{ARGV.spec_count}}])
local ids = {{ARGV.more}} + {{SPEC}} * spec_count
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
  local b = {{ARGV.more}} - 1 + {{SPEC}} * s
  local scope, max = ARGV[b + {{SPEC.scope}}], tonumber(ARGV[b + {{SPEC.max_impressions}}])
  local window = tonumber(ARGV[b + {{SPEC.window_seconds}}])
  if scope == 'cooldown' then
    if not cooldown or window > cooldown then cooldown = window end
  elseif scope == 'placement' then
    specs[#specs + 1] = {max = max, window = window, since = now - window, signature = ARGV[b + {{SPEC.signature}}]}
    -- The slates field keeps one more, since this request's own slate may be among them.
    if not slates_keep or max + 1 > slates_keep then slates_keep = max + 1 end
  elseif scope == 'item' or scope == 'category' or scope == 'entity' or scope == 'campaign' then
    local spec = {
      tag = true, max = max, window = window, since = now - window, signature = ARGV[b + {{SPEC.signature}}],
      counts = {}, space = scope .. ARGV[b + {{SPEC.this_placement}}],
      prefix = ARGV[b + {{SPEC.this_placement}}] == '1' and #placement + 1 or 0,
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
-- Where the impression log's arguments start, when the caller logs the slate too (caps_enforce_and_log.lua).
local log_at = a
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
    local got = redis.call('HMGET', KEYS[{{KEYS.counts}}], unpack(ARGV, start, math.min(start + 199, upto)))
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
  local value = redis.call('HGET', KEYS[{{KEYS.counts}}], slates_field)
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
    local hidden = redis.call('ZMSCORE', KEYS[{{KEYS.cooldown}}], unpack(ARGV, ids + start, ids + last))
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
    redis.call('HSET', KEYS[{{KEYS.counts}}], unpack(values))
    redis.call('ZADD', KEYS[{{KEYS.touched}}], unpack(touched))
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
  touched[#touched + 1] = ARGV[{{ARGV.now}}]
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
    blocks[#blocks + 1] = spec.signature .. '\31' .. dim
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
  redis.call('HSET', KEYS[{{KEYS.blocks}}], unpack(blocks, start, math.min(start + 399, #blocks)))
end
if #written > 0 or slates_written or #blocks > 0 then
  -- Fields and blocks that are over: at most a bounded number a call, so a call stays short.
  local stale = redis.call('ZRANGEBYSCORE', KEYS[{{KEYS.touched}}], '-inf', string.format('%.17g', old),
                           'LIMIT', 0, 100)
  if #stale > 0 then
    redis.call('HDEL', KEYS[{{KEYS.counts}}], unpack(stale))
    redis.call('ZREM', KEYS[{{KEYS.touched}}], unpack(stale))
  end
  if redis.call('HLEN', KEYS[{{KEYS.blocks}}]) > 32 then
    -- The times alone first (half the reply): most calls find none over, and then read no names.
    local untils, over = redis.call('HVALS', KEYS[{{KEYS.blocks}}]), false
    for n = 1, #untils do
      if tonumber(untils[n]) <= now then
        over = true
        break
      end
    end
    if over then
      local all, gone = redis.call('HGETALL', KEYS[{{KEYS.blocks}}]), {}
      for n = 1, #all, 2 do
        if tonumber(all[n + 1]) <= now then gone[#gone + 1] = all[n] end
      end
      for start = 1, #gone, 400 do
        redis.call('HDEL', KEYS[{{KEYS.blocks}}], unpack(gone, start, math.min(start + 399, #gone)))
      end
    end
  end
  local ttl = math.ceil(retention)
  redis.call('EXPIRE', KEYS[{{KEYS.counts}}], ttl)
  redis.call('EXPIRE', KEYS[{{KEYS.touched}}], ttl)
  redis.call('EXPIRE', KEYS[{{KEYS.blocks}}], ttl)
end
