-- Each generation's dedupe layout ("bits,bits..." of its levels): a generation not yet known gets one level, with
-- enough sets for the busier of the two generations before it, begun now (or at the generation's start). The
-- layout hash has no expiry, so that an eviction policy for volatile keys cannot take it and leave its sets
-- unread; it forgets old generations itself.
--! KEYS: layout
--! ARGV: ids_per_set max_shard_bits now generations...
local layout = KEYS[{{KEYS.layout}}]
local per_set, max_bits = tonumber(ARGV[{{ARGV.ids_per_set}}]), tonumber(ARGV[{{ARGV.max_shard_bits}}])
local now = tonumber(ARGV[{{ARGV.now}}])
local layouts, oldest = {}, nil
for index = {{ARGV.generations}}, #ARGV do
  local generation = tonumber(ARGV[index])
  if not oldest or generation < oldest then oldest = generation end
  local levels = redis.call('HGET', layout, 'b:' .. generation)
  if not levels then
    local ids = math.max(tonumber(redis.call('HGET', layout, 'n:' .. (generation - 1)) or '0'),
                         tonumber(redis.call('HGET', layout, 'n:' .. (generation - 2)) or '0'))
    local bits = 0
    while bits < max_bits and ids > per_set * 2 ^ bits do bits = bits + 1 end
    levels = tostring(bits)
    redis.call('HSET', layout, 'b:' .. generation, levels, 't:' .. generation,
               math.max(now, generation * {{GENERATION_SECONDS}}))
  end
  layouts[#layouts + 1] = levels
end
for generation = oldest - 10, oldest - 3 do
  redis.call('HDEL', layout, 'b:' .. generation, 'n:' .. generation, 'c:' .. generation, 't:' .. generation)
end
return layouts
