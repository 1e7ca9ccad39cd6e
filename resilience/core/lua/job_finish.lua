--[[ job_finish: record how a run ended and drop its registry entry.

KEYS[1]  jobs:state:<job id>
KEYS[2]  jobs:active
KEYS[3]  jobs:active:deadlines
KEYS[4]  idempotency:<key> (optional): released if this job owns it and the
         outcome is "dead" (the job's release_key_on_dead_letter option)
KEYS[last] celery-task-meta-<id> (optional, with ARGV[8]) the job's result
ARGV[1]  job id
ARGV[2]  worker id of this run
ARGV[3]  outcome: "done" | "retrying" | "dead" | "released" | "crashed"
ARGV[4]  attempt the state records (for "retrying": the next attempt)
ARGV[5]  now (epoch seconds)
ARGV[6]  state TTL (seconds)
ARGV[7]  "1" when the guard is on
ARGV[8]  the job's result meta (SUCCESS), as Celery's Redis result backend
         encodes it ("" when Celery stores it itself); its key is then the
         last of KEYS
ARGV[9]  the result's expiry (seconds; 0: none)
Returns  1 if this run's registry entry was removed, else 0

The result is stored in the same step as the record that says done, so a
crash after the body never leaves a job done without its result (Celery's
RedisBackend._store_result, SET then PUBLISH, unless the meta says SUCCESS).
The registry entry is removed only if this run still owns it, so a run that
was declared dead and requeued cannot remove its successor's entry.
"released" deletes the execution record so the job may run again;
"crashed" (the worker's pool process died mid-run) keeps the delivery count
so that a job that keeps killing its worker is caught as poison. The record's
publish tokens (p, ps; see job_start) are kept.
]]
--#include result_state

local job_id, owner, outcome = ARGV[1], ARGV[2], ARGV[3]
local result = ARGV[8] or ""

if result ~= "" then
  store_state(KEYS[#KEYS], result, tonumber(ARGV[9]))
end

if outcome == "dead" and result == "" and KEYS[4] and redis.call("GET", KEYS[4]) == job_id then
  redis.call("DEL", KEYS[4])
end

if ARGV[7] == "1" then
  if outcome == "released" then
    redis.call("DEL", KEYS[1])
  else
    local ok, st = pcall(cjson.decode, redis.call("GET", KEYS[1]) or "")
    if not (ok and type(st) == "table") then
      st = nil
    end
    if outcome == "crashed" then
      if st then
        st.s = "crashed"
        st.t = tonumber(ARGV[5])
        redis.call("SET", KEYS[1], cjson.encode(st), "KEEPTTL")
      end
    else
      local record = cjson.encode({s = outcome, a = tonumber(ARGV[4]), w = owner, t = tonumber(ARGV[5]),
                                   p = st and st.p, ps = st and st.ps})
      redis.call("SET", KEYS[1], record, "EX", tonumber(ARGV[6]))
    end
  end
end

local raw = redis.call("HGET", KEYS[2], job_id)
if raw then
  local ok, entry = pcall(cjson.decode, raw)
  if (not ok) or type(entry) ~= "table" or entry.worker == owner then
    redis.call("HDEL", KEYS[2], job_id)
    redis.call("ZREM", KEYS[3], job_id)
    return 1
  end
end
return 0
