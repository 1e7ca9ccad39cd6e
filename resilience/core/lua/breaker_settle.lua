--[[ breaker_settle: record the outcome of one call through a circuit breaker.

closed:    a failure counts (fail_max consecutive failures open it), a success
           resets the count;
half-open: a trial success closes it, any failure opens it again;
open:      outcomes of calls admitted before it opened only add to the count.

KEYS[1]  circuit_breakers:status  hash  name -> JSON record (see breaker_admit.lua)
KEYS[2]  stats:breakers           hash  "<name>:<event>" -> count
                                        (counted with redis.pcall: a count that is not
                                        a number never stops the breaker)
ARGV[1]  breaker name
ARGV[2]  now (epoch seconds, float); "" means the server's clock
ARGV[3]  outcome: "success" or "failure"
ARGV[4]  "1" when the call was admitted as a half-open trial
ARGV[5]  fail_max
ARGV[6]  reset timeout (seconds)
Returns  {state, failures, transition, state before}; transition is "open",
         "closed" or ""
]]
local name = ARGV[1]
local now = tonumber(ARGV[2])
if not now then
  local t = redis.call("TIME")
  now = tonumber(t[1]) + tonumber(t[2]) / 1e6
end
local failed = ARGV[3] == "failure"
local trial = ARGV[4] == "1"
local fail_max = tonumber(ARGV[5])

local rec = {state = "closed", failures = 0}
local raw = redis.call("HGET", KEYS[1], name)
if raw then
  local ok, decoded = pcall(cjson.decode, raw)
  if ok and type(decoded) == "table" and decoded.state then
    rec = decoded
  end
end
local failures = tonumber(rec.failures) or 0
local before = rec.state
local transition = ""

local function open()
  rec.state = "open"
  rec.opened_at = now
  rec.trials = 0
  rec.changed_at = now
  transition = "open"
  redis.pcall("HINCRBY", KEYS[2], name .. ":opened", 1)
end

if failed then
  failures = failures + 1
  rec.failures = failures
  if before == "closed" and failures >= fail_max then
    open()
  elseif before == "half-open" then
    open()
  end
  redis.pcall("HINCRBY", KEYS[2], name .. ":failures", 1)
else
  if before == "closed" then
    if failures == 0 and raw then
      return {before, 0, "", before}
    end
    rec.failures = 0
  elseif before == "half-open" and trial then
    rec.state = "closed"
    rec.failures = 0
    rec.trials = 0
    rec.changed_at = now
    transition = "closed"
    redis.pcall("HINCRBY", KEYS[2], name .. ":closed", 1)
  else
    return {before, failures, "", before}
  end
end
rec.fail_max = fail_max
rec.reset_timeout_sec = tonumber(ARGV[6])
redis.call("HSET", KEYS[1], name, cjson.encode(rec))
return {rec.state, tonumber(rec.failures) or 0, transition, before}
