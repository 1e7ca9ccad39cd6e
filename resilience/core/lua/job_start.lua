--[[ job_start: claim a job's execution record as it starts running.

The execution guard and the active-job registry are one record: a job runs
only if no live run holds it and it has not completed, and the claim, the
registry entry and its progress deadline are written in one step.

KEYS[1]  jobs:state:<job id>     string, JSON {s, a, w, t, n, r, p, ps}
KEYS[2]  jobs:active             hash  job id -> JSON registry entry
KEYS[3]  jobs:active:deadlines   zset  job id -> progress deadline (epoch s)
KEYS[4]  workers:heartbeats      zset  worker id -> last heartbeat (epoch s)
KEYS[5]  idempotency:<key>       (optional, when the message carries a key) the
                                 job id that owns the key
KEYS[last] celery-task-meta-<id> (optional, with ARGV[15]) the job's result
ARGV[1]  job id
ARGV[2]  worker id of this run (hostname|boot)
ARGV[3]  now (epoch seconds, float)
ARGV[4]  attempt (the message's retries count)
ARGV[5]  registry entry JSON
ARGV[6]  progress deadline (epoch seconds)
ARGV[7]  state TTL (seconds)
ARGV[8]  "1" when the guard is on
ARGV[9]  "1" when the registry is on
ARGV[10] heartbeat timeout (seconds): a run whose worker beat within it is live
ARGV[11] "1" when heartbeats are recorded (else a run is live for ARGV[12] s)
ARGV[12] fallback liveness window (seconds)
ARGV[13] run token: names this claim, so a run that never learnt whether its
         claim landed (Redis lost mid-call) can withdraw exactly it (job_unstart)
ARGV[14] publish token of the message ("" when it has none): every publish
         through the submit path has its own, and every re-publish of that
         message (redelivery, restore, hand-over, sweep, spool, retry) keeps it
ARGV[15] the job's STARTED result meta, as Celery's Redis result backend
         encodes it ("" when Celery stores it itself: task_track_started off,
         or a result backend on another Redis); its key is then the last of KEYS
ARGV[16] the result's expiry (seconds; 0: none)
When the job runs, its STARTED state is stored in the same step, as Celery
would: unless the stored meta already says SUCCESS, SET (with the expiry) and
PUBLISH on the key's channel for callers waiting on the result.
A record left "running" by a dead worker, or marked "crashed" by the worker
whose pool process died, lets the job run again and counts the delivery.
A message whose idempotency key is owned by another job (published around
the submit path, e.g. send_task with the header) is a duplicate of that job.
A message of another publish than the record's (p) is a new publish under a
used id, made on purpose (a chord body, replace(), a frozen signature applied
again): it runs as a new job unless a run on a live worker holds the id
(busy), or it is a publish the record has already moved past (ps, the last
four: stale). Without a token on either side the rules above apply as they are.
Returns  {"run", deliveries} | {"done"} | {"dead"} | {"stale", attempt}
         | {"busy", worker id} | {"duplicate", owner job id}
]]
--#include result_state

local job_id, owner, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local attempt = tonumber(ARGV[4])
local publish = ARGV[14]
local deliveries = 1
local p, ps = nil, nil

local function live(st)
  if ARGV[11] == "1" then
    local beat = redis.call("ZSCORE", KEYS[4], st.w)
    return beat and (tonumber(beat) > now - tonumber(ARGV[10]))
  end
  return (tonumber(st.t) or 0) > now - tonumber(ARGV[12])
end

local started = ARGV[15] or ""
-- the idempotency key, when there is one, comes before the result key
local key_count = #KEYS
if started ~= "" then
  key_count = key_count - 1
end

if ARGV[8] == "1" then
  if key_count >= 5 then
    local key_owner = redis.call("GET", KEYS[5])
    if key_owner and key_owner ~= job_id then
      return {"duplicate", key_owner}
    end
  end
  local raw = redis.call("GET", KEYS[1])
  if raw then
    local ok, st = pcall(cjson.decode, raw)
    if ok and type(st) == "table" and publish ~= "" and st.p and st.p ~= publish then
      for _, seen in ipairs(st.ps or {}) do
        if seen == publish then
          return {"stale", tostring(st.a or 0)}
        end
      end
      if st.s == "running" and live(st) then
        return {"busy", st.w}
      end
      ps = {st.p}
      for i = 1, math.min(3, #(st.ps or {})) do
        ps[i + 1] = st.ps[i]
      end
    elseif ok and type(st) == "table" then
      p, ps = st.p, st.ps
      local st_attempt = tonumber(st.a) or 0
      if st.s == "done" then
        return {"done"}
      elseif st.s == "dead" and attempt <= st_attempt then
        return {"dead"}
      elseif (st.s == "retrying" or st.s == "dead") and attempt < st_attempt then
        return {"stale", tostring(st_attempt)}
      elseif st.s == "running" or st.s == "crashed" then
        if attempt < st_attempt then
          return {"stale", tostring(st_attempt)}
        end
        if st.s == "running" and live(st) then
          -- a run on a live worker holds it: never start a second one
          return {"busy", st.w}
        end
        if attempt == st_attempt then
          deliveries = (tonumber(st.n) or 1) + 1
        end
      end
    end
  end
  if publish ~= "" then
    p = publish
  end
  local record = cjson.encode({s = "running", a = attempt, w = owner, t = now, n = deliveries, r = ARGV[13],
                               p = p, ps = ps})
  redis.call("SET", KEYS[1], record, "EX", tonumber(ARGV[7]))
end

if ARGV[9] == "1" then
  redis.call("HSET", KEYS[2], job_id, ARGV[5])
  redis.call("ZADD", KEYS[3], tonumber(ARGV[6]), job_id)
end
if started ~= "" then
  store_state(KEYS[#KEYS], started, tonumber(ARGV[16]))
end
return {"run", tostring(deliveries)}
