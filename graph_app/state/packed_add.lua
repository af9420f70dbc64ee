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
