--[[ lock_release: release a lock only if the caller still holds it.

KEYS[1]  locks:<name>   string with TTL: the holder's token
ARGV[1]  the caller's token
Returns  1 if released, 0 if the lock had expired or belongs to someone else
]]
if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("DEL", KEYS[1])
end
return 0
