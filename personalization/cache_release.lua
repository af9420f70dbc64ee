-- Only the holder releases the lock (an expired lock may belong to another caller by now).
--! KEYS: lock
--! ARGV: token
if redis.call('GET', KEYS[{{KEYS.lock}}]) == ARGV[{{ARGV.token}}] then return redis.call('DEL', KEYS[{{KEYS.lock}}]) end
return 0
