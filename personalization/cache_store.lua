-- Stores the built value fresh while the caller still holds the lock. Losing it means an invalidation (or a build
-- slower than the lock): the payload may predate a change, so it is stored already stale (the next reader
-- rebuilds) unless a build newer than this one has landed meanwhile. Returns 1 (fresh), 0 (left alone), -1 (stale).
--! KEYS: value lock
--! ARGV: token stamp payload ttl_ms
local value, lock = KEYS[{{KEYS.value}}], KEYS[{{KEYS.lock}}]
local stamp, payload, ttl_ms = ARGV[{{ARGV.stamp}}], ARGV[{{ARGV.payload}}], ARGV[{{ARGV.ttl_ms}}]
if redis.call('GET', lock) == ARGV[{{ARGV.token}}] then
  redis.call('SET', value, 'i1' .. stamp .. payload, 'PX', ttl_ms)
  redis.call('DEL', lock)
  return 1
end
local current = redis.call('GET', value)
local current_stamp = current and string.sub(current, 1, 2) == 'i1' and tonumber(string.sub(current, 3, 18))
if current_stamp and current_stamp >= tonumber(stamp) then return 0 end
redis.call('SET', value, 'i1' .. string.rep('0', 16) .. payload, 'PX', ttl_ms)
return -1
