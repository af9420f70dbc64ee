-- A user key's online state erased in its partition, with the tombstone the stream consumer honours (the last
-- entry of the stream at the erasure): its keys deleted (`erased`, every owner's), its entries in the event stream
-- and its field in the partition's user nearest lists removed. Returns the keys deleted, the stream entries
-- deleted, the hash fields deleted.
--! KEYS: stream tombstone nearest_lists erased...
--! ARGV: tombstone_ttl user_key entries...
local stream = KEYS[{{KEYS.stream}}]
local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
local boundary = '0-0'
if last[1] then boundary = last[1][1] end
redis.call('SET', KEYS[{{KEYS.tombstone}}], boundary, 'EX', tonumber(ARGV[{{ARGV.tombstone_ttl}}]))
local deleted = 0
for index = {{KEYS.erased}}, #KEYS do deleted = deleted + redis.call('DEL', KEYS[index]) end
local entries = 0
for index = {{ARGV.entries}}, #ARGV do entries = entries + redis.call('XDEL', stream, ARGV[index]) end
local fields = redis.call('HDEL', KEYS[{{KEYS.nearest_lists}}], ARGV[{{ARGV.user_key}}])
return {deleted, entries, fields}
