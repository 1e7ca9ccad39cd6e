--[[ breaker_admit: admit or refuse one call through a circuit breaker.

The breaker's whole state is one JSON record in the public status hash, so
every process and host sees the same state and every transition is atomic.

KEYS[1]  circuit_breakers:status  hash  name -> JSON {state, failures, opened_at,
                                        half_open_at, trials, fail_max,
                                        reset_timeout_sec, changed_at}
KEYS[2]  stats:breakers           hash  "<name>:<event>" -> count
                                        (counted with redis.pcall: a count that is not
                                        a number never stops the breaker)
ARGV[1]  breaker name
ARGV[2]  now (epoch seconds, float); "" means the server's clock
ARGV[3]  fail_max
ARGV[4]  reset timeout (seconds)
ARGV[5]  half-open max calls (trial calls admitted cluster-wide)
Returns  {verdict, state, failures, wait_sec, transition}
  verdict     "pass" (closed), "trial" (a counted half-open trial call),
              "reject" (open, or half-open with every trial slot taken)
  wait_sec    string, seconds until a trial may be admitted (reject only)
  transition  "half-open" when this call moved the breaker out of open, else ""
A closed breaker is only read. A half-open trial that never reports back
holds its slot for one reset timeout at most.
]]
local name = ARGV[1]
local now = tonumber(ARGV[2])
if not now then
  local t = redis.call("TIME")
  now = tonumber(t[1]) + tonumber(t[2]) / 1e6
end
local reset_timeout = tonumber(ARGV[4])
local max_trials = tonumber(ARGV[5])

local raw = redis.call("HGET", KEYS[1], name)
if not raw then
  return {"pass", "closed", 0, "0", ""}
end
local ok, rec = pcall(cjson.decode, raw)
if not ok or type(rec) ~= "table" or rec.state == "closed" or rec.state == nil then
  local failures = (ok and type(rec) == "table" and tonumber(rec.failures)) or 0
  return {"pass", "closed", failures, "0", ""}
end

local function save()
  rec.fail_max = tonumber(ARGV[3])
  rec.reset_timeout_sec = reset_timeout
  redis.call("HSET", KEYS[1], name, cjson.encode(rec))
end

local failures = tonumber(rec.failures) or 0
if rec.state == "open" then
  local due = (tonumber(rec.opened_at) or 0) + reset_timeout
  if now < due then
    redis.pcall("HINCRBY", KEYS[2], name .. ":rejected", 1)
    return {"reject", "open", failures, tostring(due - now), ""}
  end
  rec.state = "half-open"
  rec.half_open_at = now
  rec.trials = 1
  rec.changed_at = now
  save()
  redis.pcall("HINCRBY", KEYS[2], name .. ":half_opened", 1)
  return {"trial", "half-open", failures, "0", "half-open"}
end

-- half-open
local trials = tonumber(rec.trials) or 0
local lease_end = (tonumber(rec.half_open_at) or 0) + reset_timeout
if trials < max_trials or now >= lease_end then
  if trials >= max_trials then
    -- the trial calls never reported back (their callers died): grant new slots
    rec.half_open_at = now
    trials = 0
  end
  rec.trials = trials + 1
  save()
  return {"trial", "half-open", failures, "0", ""}
end
redis.pcall("HINCRBY", KEYS[2], name .. ":rejected", 1)
return {"reject", "half-open", failures, tostring(lease_end - now), ""}
