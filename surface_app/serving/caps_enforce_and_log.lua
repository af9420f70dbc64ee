-- The caps enforced and recorded, and the slate's impressions logged when nothing was refused (after
-- packed_add.lua, impression_log.lua and caps_enforce_body.lua): one call and one round trip fewer a request.
if #refused == 0 and ARGV[log_at] then
  log_impressions(KEYS[{{KEYS.log_keys}}], KEYS[{{KEYS.log_keys}} + 1], log_at - 1)
end
return refused
