--[[ idempotency_release: compare-and-delete an idempotency key.

A key is released only by the job that owns it, so a late release (a failed
publish, a dead-lettered run) never frees a key another job has claimed since.

KEYS[1]  idempotency:<key>   string with TTL: the job id that owns the key
ARGV[1]  job id that believes it owns the key
Returns  1 if the key was deleted, else 0
]]
if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("DEL", KEYS[1])
end
return 0
