-- One partition's share of a request (after packed_add.lua, affinity.lua, dedupe.lua and state.lua): per event its
-- keys (EVENT_KEYS: its dedupe sets last) and arguments (EVENT). Returns per event 1 (new) or 0 (a duplicate), or
-- "stale" (having written nothing) when the caller's dedupe layouts are not the stored ones.
--! RECORD EVENT_KEYS: recent session_items affinity placement_counters recent_last cooldown purchased dedupe_sets...
--! RECORD EVENT: item weight marks_interest ts payload has_session late placement_click ctr_half_life cooldown
--! RECORD EVENT: purchase dedupe_member
if not dedupe_current() then return 'stale' end
local results = {}
local added = 0
for e = 0, events - 1 do
  local k = first_event_key + ({{EVENT_KEYS}} + dedupe_keys) * e
  local a = own_args - 1 + {{EVENT}} * e
  local item, weight = ARGV[a + {{EVENT.item}}], tonumber(ARGV[a + {{EVENT.weight}}])
  local ts_text = ARGV[a + {{EVENT.ts}}]
  local ts = tonumber(ts_text)
  if not dedupe_first(k + {{EVENT_KEYS.dedupe_sets}}, dedupe_keys, ARGV[a + {{EVENT.dedupe_member}}],
                      dedupe_expire_at) then
    results[e + 1] = 0
  else
    results[e + 1] = 1
    added = added + 1
    if item ~= '' and ARGV[a + {{EVENT.cooldown}}] == '1' then
      cooldown_add(KEYS[k + {{EVENT_KEYS.cooldown}}], item, ts_text)
    end
    if item ~= '' and ARGV[a + {{EVENT.purchase}}] == '1' then
      purchased_add(KEYS[k + {{EVENT_KEYS.purchased}}], item, ts_text)
    end
    -- Older than the dedupe window (late): maybe a resend we no longer remember, so the durable log decides:
    -- the consumer applies it (the apply script) once the log stored it as new.
    if ARGV[a + {{EVENT.late}}] ~= '1' then
      if item ~= '' and ARGV[a + {{EVENT.marks_interest}}] == '1' then
        recent_push(KEYS[k + {{EVENT_KEYS.recent}}], KEYS[k + {{EVENT_KEYS.recent_last}}],
                    KEYS[k + {{EVENT_KEYS.affinity}}], item, ts)
        if ARGV[a + {{EVENT.has_session}}] == '1' then
          local session_items = KEYS[k + {{EVENT_KEYS.session_items}}]
          redis.call('LREM', session_items, 0, item)
          redis.call('LPUSH', session_items, item)
          redis.call('LTRIM', session_items, 0, recent_kept - 1)
          redis.call('EXPIRE', session_items, ARGV[{{ARGV.session_ttl}}])
        end
      end
      if item ~= '' and weight > 0 then
        popularity_add(item, weight, ts)
        affinity_add(KEYS[k + {{EVENT_KEYS.affinity}}], item, weight, ts)
      end
      if item ~= '' and ARGV[a + {{EVENT.placement_click}}] == '1' then
        local ctr_half_life = tonumber(ARGV[a + {{EVENT.ctr_half_life}}])
        packed_add(KEYS[k + {{EVENT_KEYS.placement_counters}}], item, ts, {1, 0}, {ctr_half_life, ctr_half_life})
      end
    end
    redis.call('XADD', KEYS[{{KEYS.stream}}], '*', 'e', ARGV[a + {{EVENT.payload}}])
  end
end
dedupe_added(added)
return results
