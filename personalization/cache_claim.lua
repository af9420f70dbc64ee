-- An item cache's value if fresh, else the rebuild lock if free: checking and locking in one step, so a build that
-- lands between a caller's GET and its lock attempt is not built a second time. `fresh_after`: epoch ms. Returns
-- {state, value or nil}: state 1 when the value is fresh, else 2 when the caller took the lock, else 0 (another
-- caller holds it).
--! KEYS: value lock
--! ARGV: token lock_ms fresh_after
local value = redis.call('GET', KEYS[{{KEYS.value}}])
if value and string.sub(value, 1, 2) ~= 'i1' then value = false end
local stamp = value and tonumber(string.sub(value, 3, 18))
if stamp and stamp > tonumber(ARGV[{{ARGV.fresh_after}}]) then return {1, value} end
if redis.call('SET', KEYS[{{KEYS.lock}}], ARGV[{{ARGV.token}}], 'NX', 'PX', ARGV[{{ARGV.lock_ms}}]) then
  return {2, value}
end
return {0, value}
