-- The user's affinity hash (`graph_app.features.user_affinity`): one field an entity, named by 6 bytes of the entity
-- key's SHA-1, its forward-decayed counter packed as a float, a category's with the time of its latest event after
-- it (a double); "#m" the epoch, the latest event's time and the latest item of interest's (doubles, NaN for none).
-- Hashes of the older layouts are converted by the first script that writes to them.
local affinity_rebase_after = {{AFFINITY_REBASE_AFTER_HALF_LIVES}}
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
local function affinity_cap(affinity, entities_kept)
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
