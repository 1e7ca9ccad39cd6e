--[[ schedule: keep a delayed run in Redis until it is due.

KEYS[1]  jobs:scheduled            zset  job id -> due time (epoch s)
KEYS[2]  jobs:scheduled:payloads   hash  job id -> JSON {queue: list key, message: kombu envelope}
KEYS[3]  jobs:state:<job id>       string, the job's execution record
KEYS[4]  jobs:active               hash  job id -> registry entry
KEYS[5]  jobs:active:deadlines     zset  job id -> progress deadline
KEYS[6]  unacked                   kombu's hash of unacked messages by delivery tag
KEYS[7]  unacked_index             kombu's zset of unacked delivery tags
ARGV[1]  job id
ARGV[2]  due time (epoch seconds)
ARGV[3]  payload JSON
ARGV[4]  "1" when this is the running job re-submitting itself (a retry)
ARGV[5]  worker id of the running job
ARGV[6]  next attempt (the retry's retries count)
ARGV[7]  now (epoch seconds)
ARGV[8]  state TTL (seconds)
ARGV[9]  "1" when the execution guard is on
ARGV[10] delivery tag of the running job's message ("" when unknown)
Returns  1

For a retry the same step records the execution record as "retrying" with
the next attempt (a redelivery of the old attempt is then stale) and drops
the run's jobs:active entry if it still owns it, as job_finish does, and takes
the old message out of kombu's unacked hash: a crash right after this step
neither loses the retry nor redelivers the old attempt (Celery's later ack is
a no-op).
]]
redis.call("ZADD", KEYS[1], tonumber(ARGV[2]), ARGV[1])
redis.call("HSET", KEYS[2], ARGV[1], ARGV[3])

if ARGV[4] == "1" then
  if ARGV[9] == "1" then
    local ok, st = pcall(cjson.decode, redis.call("GET", KEYS[3]) or "")
    local p, ps = nil, nil
    if ok and type(st) == "table" then
      p, ps = st.p, st.ps  -- the retry keeps its publish token (see job_start)
    end
    local record = cjson.encode({s = "retrying", a = tonumber(ARGV[6]), w = ARGV[5], t = tonumber(ARGV[7]),
                                 p = p, ps = ps})
    redis.call("SET", KEYS[3], record, "EX", tonumber(ARGV[8]))
  end
  local raw = redis.call("HGET", KEYS[4], ARGV[1])
  if raw then
    local ok, entry = pcall(cjson.decode, raw)
    if (not ok) or type(entry) ~= "table" or entry.worker == ARGV[5] then
      redis.call("HDEL", KEYS[4], ARGV[1])
      redis.call("ZREM", KEYS[5], ARGV[1])
    end
  end
  if ARGV[10] ~= "" then
    redis.call("HDEL", KEYS[6], ARGV[10])
    redis.call("ZREM", KEYS[7], ARGV[10])
  end
end
return 1
