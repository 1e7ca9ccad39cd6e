-- Decide whether an alert is sent now or counted as a repeat of one already sent.
--
-- KEYS[1]  alerts:window:<rule>:<subject>  string with TTL: the window is open
-- KEYS[2]  alerts:windows     sorted set, member -> epoch ms the window ends
-- KEYS[3]  alerts:suppressed  hash, member -> repeats suppressed in the window
-- KEYS[4]  alerts:last        hash, member -> JSON of the latest suppressed alert
-- ARGV[1]  member: rule .. "\x1f" .. subject
-- ARGV[2]  now in epoch ms
-- ARGV[3]  window in ms
-- ARGV[4]  the alert's JSON
-- Returns  1: send it (a window opened); 0: suppressed (counted for the summary)
if redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[3]) then
  redis.call('ZADD', KEYS[2], tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[1])
  return 1
end
redis.pcall('HINCRBY', KEYS[3], ARGV[1], 1)  -- a count that is not a number must not stop the alert
redis.call('HSET', KEYS[4], ARGV[1], ARGV[4])
return 0
