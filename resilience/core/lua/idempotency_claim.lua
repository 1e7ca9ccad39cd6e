--[[ idempotency_claim: claim an idempotency key, or learn who owns it.

One round trip on any Redis version (SET NX GET needs Redis 7).

KEYS[1]  idempotency:<key>   string with TTL: the job id that owns the key
ARGV[1]  job id of this submission
ARGV[2]  TTL (seconds)
Returns  false (nil) when the key was claimed for ARGV[1], else the owner's job id
]]
if redis.call("SET", KEYS[1], ARGV[1], "NX", "EX", tonumber(ARGV[2])) then
  return false
end
return redis.call("GET", KEYS[1])
