-- Marks the value stale in place (SETRANGE keeps its TTL) and drops the lock, so that a build already under way
-- cannot store its possibly outdated value as fresh. Returns 1 if there was a value.
--! KEYS: value lock
local marked = 0
if redis.call('GETRANGE', KEYS[{{KEYS.value}}], 0, 1) == 'i1' then
  redis.call('SETRANGE', KEYS[{{KEYS.value}}], 2, string.rep('0', 16))
  marked = 1
end
redis.call('DEL', KEYS[{{KEYS.lock}}])
return marked
