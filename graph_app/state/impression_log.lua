-- A slate's impressions logged: counted in the placement's item counters (decayed, for the click-through rate) and
-- appended to the partition's stream, from which the durable log stores them. `before`: where the IMPRESSION
-- record's arguments start, less one (after packed_add.lua).
--! RECORD IMPRESSION: ts half_life payload items...
local function log_impressions(counters, stream, before)
  local ts = tonumber(ARGV[before + {{IMPRESSION.ts}}])
  local half_life = tonumber(ARGV[before + {{IMPRESSION.half_life}}])
  for index = before + {{IMPRESSION.items}}, #ARGV do
    packed_add(counters, ARGV[index], ts, {0, 1}, {half_life, half_life})
  end
  redis.call('XADD', stream, '*', 'e', ARGV[before + {{IMPRESSION.payload}}])
end
