-- A slate's impressions logged in the user's partition (after packed_add.lua and impression_log.lua).
--! KEYS: counters stream
--! ARGV: impression...
log_impressions(KEYS[{{KEYS.counters}}], KEYS[{{KEYS.stream}}], {{ARGV.impression}} - 1)
return 1
