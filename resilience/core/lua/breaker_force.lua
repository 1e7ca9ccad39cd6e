--[[ breaker_force: set a circuit breaker's state by hand (reset, or trip it).

KEYS[1]  circuit_breakers:status  hash  name -> JSON record (see breaker_admit.lua)
KEYS[2]  stats:breakers           hash  "<name>:<event>" -> count
                                        (counted with redis.pcall: a count that is not
                                        a number never stops the breaker)
ARGV[1]  breaker name
ARGV[2]  now (epoch seconds, float); "" means the server's clock
ARGV[3]  target state: "closed" or "open"
ARGV[4]  fail_max
ARGV[5]  reset timeout (seconds)
Returns  the state before the change ("closed" when the breaker had no record)
]]
local name = ARGV[1]
local now = tonumber(ARGV[2])
if not now then
  local t = redis.call("TIME")
  now = tonumber(t[1]) + tonumber(t[2]) / 1e6
end
local before = "closed"
local raw = redis.call("HGET", KEYS[1], name)
if raw then
  local ok, decoded = pcall(cjson.decode, raw)
  if ok and type(decoded) == "table" and type(decoded.state) == "string" then
    before = decoded.state
  end
end
local rec = {state = ARGV[3], failures = 0, trials = 0, changed_at = now,
             fail_max = tonumber(ARGV[4]), reset_timeout_sec = tonumber(ARGV[5])}
if ARGV[3] == "open" then
  rec.opened_at = now
  redis.pcall("HINCRBY", KEYS[2], name .. ":opened", 1)
else
  redis.pcall("HINCRBY", KEYS[2], name .. ":reset", 1)
end
redis.call("HSET", KEYS[1], name, cjson.encode(rec))
return before
