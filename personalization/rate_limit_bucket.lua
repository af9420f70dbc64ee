-- A token bucket (a hash: t = tokens, s = when they were counted, in microseconds of Redis's clock). `cost` 0 only
-- looks: allowed when a token is there, nothing is written. Returns {allowed (0/1), whole tokens left, ms until a
-- token is there (0 when allowed), ms until the bucket is full}.
--! KEYS: bucket
--! ARGV: quota per_second cost
local quota = tonumber(ARGV[{{ARGV.quota}}])
local rate = tonumber(ARGV[{{ARGV.per_second}}])
local cost = tonumber(ARGV[{{ARGV.cost}}])
local bucket = KEYS[{{KEYS.bucket}}]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local state = redis.call('HMGET', bucket, 't', 's')
local tokens = tonumber(state[1]) or quota
local since = tonumber(state[2]) or now
if now > since then tokens = math.min(quota, tokens + (now - since) * rate / 1000000) end
local need = math.max(cost, 1)
local allowed = 0
local wait_ms = 0
if tokens >= need then
  allowed = 1
  tokens = tokens - cost
else
  wait_ms = math.ceil((need - tokens) * 1000 / rate)
end
local full_ms = math.ceil((quota - tokens) * 1000 / rate)
if cost > 0 then
  redis.call('HSET', bucket, 't', tostring(tokens), 's', tostring(now))
  redis.call('PEXPIRE', bucket, full_ms + 1000)
end
return {allowed, math.floor(tokens), wait_ms, full_ms}
