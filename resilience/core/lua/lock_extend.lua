--[[ lock_extend: give a held lock a new time to live, only if the caller holds it.

KEYS[1]  locks:<name>   string with TTL: the holder's token
ARGV[1]  the caller's token
ARGV[2]  new time to live (milliseconds)
Returns  1 if extended, 0 if the lock had expired or belongs to someone else
]]
if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("PEXPIRE", KEYS[1], tonumber(ARGV[2]))
end
return 0
