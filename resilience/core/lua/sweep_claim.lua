--[[ sweep_claim: take a job away from the run that holds it, exactly once.

The sweep claims a job before it acts on it (requeue, retry, dead-letter):
the claim succeeds only if the registry entry still names the same worker and,
for a stuck job, its progress deadline is still past, so a job that finished
or reported progress a moment ago is left alone, and a second sweep finds
nothing left to claim.

KEYS[1]  jobs:state:<job id>     string, JSON {s, a, w, t, n, r, p, ps}
KEYS[2]  jobs:active             hash  job id -> JSON registry entry
KEYS[3]  jobs:active:deadlines   zset  job id -> progress deadline
ARGV[1]  job id
ARGV[2]  worker id the entry must name
ARGV[3]  latest acceptable deadline (epoch seconds; "+inf" for any)
ARGV[4]  new state of the execution record: "retrying" | "dead" | "" (leave it)
ARGV[5]  attempt the record states ("retrying": the next attempt)
ARGV[6]  now (epoch seconds)
ARGV[7]  state TTL (seconds)
ARGV[8]  "1" when the execution guard is on
Returns  the claimed registry entry (JSON), or false when there was none to claim

The deadlines are read and dropped with redis.pcall: a deadlines key of the
wrong type (reported by the sweep) never stops a claim; without a readable
deadline a job is never taken for stuck.
]]
local raw = redis.call("HGET", KEYS[2], ARGV[1])
if not raw then return false end
local ok, entry = pcall(cjson.decode, raw)
if ok and type(entry) == "table" and entry.worker ~= ARGV[2] then return false end
if ARGV[3] ~= "+inf" then
  local deadline = redis.pcall("ZSCORE", KEYS[3], ARGV[1])
  if type(deadline) ~= "string" or tonumber(deadline) > tonumber(ARGV[3]) then return false end
end
redis.call("HDEL", KEYS[2], ARGV[1])
redis.pcall("ZREM", KEYS[3], ARGV[1])
if ARGV[8] == "1" and ARGV[4] ~= "" then
  local ok_st, st = pcall(cjson.decode, redis.call("GET", KEYS[1]) or "")
  local p, ps = nil, nil
  if ok_st and type(st) == "table" then
    p, ps = st.p, st.ps  -- the requeued or retried message keeps its publish token (see job_start)
  end
  local record = cjson.encode({s = ARGV[4], a = tonumber(ARGV[5]), w = ARGV[2], t = tonumber(ARGV[6]),
                               p = p, ps = ps})
  redis.call("SET", KEYS[1], record, "EX", tonumber(ARGV[7]))
end
return raw
