-- Claim the alert windows that have ended, with their suppressed repeats.
-- Each window is claimed by exactly one caller, so one summary is sent.
--
-- KEYS[1]  alerts:windows     sorted set, member -> epoch ms the window ends
-- KEYS[2]  alerts:suppressed  hash, member -> repeats suppressed
-- KEYS[3]  alerts:last        hash, member -> JSON of the latest suppressed alert
-- ARGV[1]  now in epoch ms
-- ARGV[2]  most windows to claim
-- Returns  flat list: member, count, last JSON, ... for ended windows with repeats
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  local count = tonumber(redis.call('HGET', KEYS[2], member) or '0') or 0  -- a count that is not a number: none
  local last = redis.call('HGET', KEYS[3], member)
  redis.call('HDEL', KEYS[2], member)
  redis.call('HDEL', KEYS[3], member)
  if count > 0 and last then
    table.insert(out, member)
    table.insert(out, count)
    table.insert(out, last)
  end
end
return out
