-- The ingest and apply scripts' dedupe (functions over their KEYS and ARGV).
-- dedupe_layout_current(layout, checked, before): the caller's layouts (ARGV after `before`: the `checked`
-- generations, then their layouts) are the stored ones.
-- dedupe_first(first_key, count, member, expire_at): looks an id up in its sets (KEYS from first_key: its set in
-- each level of each generation checked, first the newest level of the current generation) and adds it to the first.
-- dedupe_grow(...): counts the ids added and adds a level when the current generation's sets are full.
local function dedupe_layout_current(layout, checked, before)
  local fields, expected = {}, {}
  for index = 1, checked do
    fields[index] = 'b:' .. ARGV[before + index]
    expected[index] = ARGV[before + checked + index]
  end
  local stored = redis.call('HMGET', layout, unpack(fields))
  for index = 1, #fields do
    if stored[index] ~= expected[index] then return false end
  end
  return true
end
local function dedupe_first(first_key, count, member, expire_at)
  for index = first_key, first_key + count - 1 do
    if redis.call('SISMEMBER', KEYS[index], member) == 1 then return false end
  end
  redis.call('SADD', KEYS[first_key], member)
  redis.call('EXPIREAT', KEYS[first_key], expire_at)
  return true
end
-- A level has as many sets as its bits say: once they hold IDS_PER_SET each on average, the rest of the day goes
-- to a new level with enough sets for the ids the rate since the last level began brings until the day ends.
local function dedupe_grow(layout, generation, levels, added, now, generation_end, per_set, max_bits, max_levels)
  if added == 0 then return end
  redis.call('HINCRBY', layout, 'n:' .. generation, added)
  local in_level = redis.call('HINCRBY', layout, 'c:' .. generation, added)
  local count, last_bits = 0, 0
  for bits in string.gmatch(levels, '[^,]+') do
    count = count + 1
    last_bits = tonumber(bits)
  end
  if in_level <= per_set * 2 ^ last_bits or count >= max_levels or last_bits >= max_bits then return end
  local started = tonumber(redis.call('HGET', layout, 't:' .. generation) or '0')
  started = math.max(started, generation_end - {{GENERATION_SECONDS}})
  local expected = in_level / math.max(now - started, {{RATE_MIN_SECONDS}}) * math.max(generation_end - now, 1)
  local bits = last_bits + 1
  while bits < max_bits and expected > per_set * 2 ^ bits do bits = bits + 1 end
  redis.call('HSET', layout, 'b:' .. generation, levels .. ',' .. bits, 'c:' .. generation, 0, 't:' .. generation, now)
end
