-- A session's affinities added into its user's hash when the storefront identifies it (`graph_app.state.identity`):
-- the session's counters re-expressed against the user's epoch, the later of each category's times, the later
-- latest event and latest item of interest, then the cap. The user's keys only (a session's may live in another
-- slot: the caller read them). `recent_last`: the user's key of the layout before "#m". Per entity of the session
-- an ENTITY record: its key (or a NUL and its code), its counter (against the session's epoch), its time ('' when
-- none); '' for a session epoch, latest event or latest item of interest it has none of. Returns how many entities
-- came.
--! KEYS: affinity recent_last
--! ARGV: entities_kept half_life session_epoch session_last ttl session_recent_last entities...
--! RECORD ENTITY: key counter seen
local entities_kept, half_life = tonumber(ARGV[{{ARGV.entities_kept}}]), tonumber(ARGV[{{ARGV.half_life}}])
local affinity = KEYS[{{KEYS.affinity}}]
affinity_convert(affinity)
local epoch, last, recent_last = affinity_meta_read(affinity)
local session_epoch, session_last = tonumber(ARGV[{{ARGV.session_epoch}}]), tonumber(ARGV[{{ARGV.session_last}}])
local names, fields = {}, {}
for p = {{ARGV.entities}} - 1, #ARGV - 1, {{ENTITY}} do names[#names + 1] = ARGV[p + {{ENTITY.key}}] end
if session_epoch then
  if not epoch then epoch = session_epoch end
  local scale = 2 ^ ((session_epoch - epoch) / half_life)
  local codes = {}
  for i, entity in ipairs(names) do codes[i] = affinity_field(entity) end
  local stored = #codes > 0 and redis.call('HMGET', affinity, unpack(codes)) or {}
  for i, entity in ipairs(names) do
    local p = {{ARGV.entities}} - 1 + {{ENTITY}} * (i - 1)
    local counter, seen = affinity_unpack(stored[i])
    local other_seen = tonumber(ARGV[p + {{ENTITY.seen}}])
    if other_seen and (not seen or other_seen > seen) then seen = other_seen end
    fields[#fields + 1] = codes[i]
    fields[#fields + 1] = affinity_pack(is_category(entity) or seen ~= nil,
                                        counter + tonumber(ARGV[p + {{ENTITY.counter}}]) * scale, seen)
  end
  if session_last and (not last or session_last > last) then last = session_last end
end
-- The later latest item of interest: the user's (moved from its key of the layout before) or the session's.
recent_last = recent_last or tonumber(redis.call('GET', KEYS[{{KEYS.recent_last}}]))
local session_recent_last = tonumber(ARGV[{{ARGV.session_recent_last}}])
if session_recent_last and (not recent_last or session_recent_last > recent_last) then
  recent_last = session_recent_last
end
if not epoch and not recent_last then return 0 end
fields[#fields + 1] = '#m'
fields[#fields + 1] = affinity_meta_pack(epoch, last, recent_last)
affinity_hset(affinity, fields)
redis.call('DEL', KEYS[{{KEYS.recent_last}}])
affinity_cap(affinity, entities_kept)
redis.call('EXPIRE', affinity, ARGV[{{ARGV.ttl}}])
return #names
