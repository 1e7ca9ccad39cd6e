--[[ _result_state: a fragment, not a script; scripts include it with "--#include result_state".

store_state(key, meta, expires) stores a job's state for Celery's Redis result
backend as RedisBackend._store_result does: never over a stored SUCCESS;
SET (with the expiry in seconds, 0 for none), then PUBLISH on the key's
channel for callers waiting on the result.
]]
local function store_state(key, meta, expires)
  local ok, current = pcall(cjson.decode, redis.call("GET", key) or "")
  if ok and type(current) == "table" and current.status == "SUCCESS" then
    return
  end
  if expires > 0 then
    redis.call("SET", key, meta, "EX", expires)
  else
    redis.call("SET", key, meta)
  end
  redis.call("PUBLISH", key, meta)
end
