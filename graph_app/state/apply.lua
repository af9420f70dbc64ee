-- Events the durable log stored as new that the ingest script did not apply (late ones, imported history), of one
-- partition, each user's in event-time order: the same updates as live, except the session items, and neither a
-- dedupe (the log did it) nor the stream. After packed_add.lua, affinity.lua, dedupe.lua and state.lua. The
-- script's own first argument: the times the log knows of the items in each user's recent items (JSON: recent key
-- -> {item: time}); then per event its keys (EVENT_KEYS: its dedupe sets last) and arguments (EVENT). `dedupe`: an
-- import's event within the dedupe window (skipped if the ingest script saw it). Returns 1 for each event applied,
-- or "stale" (having written nothing) when the caller's dedupe layouts are not the stored ones.
--! RECORD EVENT_KEYS: recent recent_last affinity placement_counters cooldown purchased dedupe_sets...
--! RECORD EVENT: item weight marks_interest ts dedupe placement_click ctr_half_life cooldown purchase dedupe_member
if not dedupe_current() then return 'stale' end
local known_times = cjson.decode(ARGV[own_args])
-- An item older than the user's latest goes behind every item not known to be older: an item the log has no time
-- for arrived after the late event, so it is newer (anything that arrives live is at most the dedupe window old).
local function recent_insert(recent, legacy_last, affinity, item, ts, known)
  local _, _, last = recent_last_get(affinity, legacy_last)
  if not last or ts >= last then
    recent_push(recent, legacy_last, affinity, item, ts)
    known[item] = ts
    return
  end
  local listed = redis.call('LRANGE', recent, 0, -1)
  local pivot, present = nil, false
  for i = 1, #listed do
    local other = listed[i]
    if other == item then
      if not known[item] or known[item] >= ts then return end -- already placed by a later event
      present = true
    elseif not known[other] or known[other] > ts then
      pivot = other
    end
  end
  if present then redis.call('LREM', recent, 0, item) end
  if pivot then
    redis.call('LINSERT', recent, 'AFTER', pivot, item)
  else
    redis.call('LPUSH', recent, item)
  end
  redis.call('LTRIM', recent, 0, recent_kept - 1)
  known[item] = ts
  expire_after(recent, last)
end
local results = {}
local added = 0
for e = 0, events - 1 do
  local k = first_event_key + ({{EVENT_KEYS}} + dedupe_keys) * e
  local a = own_args + {{EVENT}} * e
  local item, weight = ARGV[a + {{EVENT.item}}], tonumber(ARGV[a + {{EVENT.weight}}])
  local ts_text = ARGV[a + {{EVENT.ts}}]
  local ts = tonumber(ts_text)
  local dedupe = ARGV[a + {{EVENT.dedupe}}] == '1'
  if dedupe and not dedupe_first(k + {{EVENT_KEYS.dedupe_sets}}, dedupe_keys, ARGV[a + {{EVENT.dedupe_member}}],
                                 dedupe_expire_at) then
    results[e + 1] = 0
  else
    results[e + 1] = 1
    if dedupe then added = added + 1 end
    if ARGV[a + {{EVENT.cooldown}}] == '1' then cooldown_add(KEYS[k + {{EVENT_KEYS.cooldown}}], item, ts_text) end
    if ARGV[a + {{EVENT.purchase}}] == '1' then purchased_add(KEYS[k + {{EVENT_KEYS.purchased}}], item, ts_text) end
    if ARGV[a + {{EVENT.marks_interest}}] == '1' then
      local recent = KEYS[k + {{EVENT_KEYS.recent}}]
      local known = known_times[recent]
      if not known then
        known = {}
        known_times[recent] = known
      end
      recent_insert(recent, KEYS[k + {{EVENT_KEYS.recent_last}}], KEYS[k + {{EVENT_KEYS.affinity}}], item, ts, known)
    end
    if weight > 0 then
      popularity_add(item, weight, ts)
      affinity_add(KEYS[k + {{EVENT_KEYS.affinity}}], item, weight, ts)
    end
    if ARGV[a + {{EVENT.placement_click}}] == '1' then
      local ctr_half_life = tonumber(ARGV[a + {{EVENT.ctr_half_life}}])
      packed_add(KEYS[k + {{EVENT_KEYS.placement_counters}}], item, ts, {1, 0}, {ctr_half_life, ctr_half_life})
    end
  end
end
dedupe_added(added)
return results
