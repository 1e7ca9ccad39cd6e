--[[ deadletter_bury: dead-letter a job and remove it everywhere in one step.

KEYS[1]  jobs:dead_letter          list, newest first
KEYS[2]  jobs:state:<job id>       the job's execution record
KEYS[3]  jobs:active               hash  job id -> registry entry
KEYS[4]  jobs:active:deadlines     zset  job id -> progress deadline
KEYS[5]  idempotency:<key>         the job's idempotency key (any key when it has none)
KEYS[6]  unacked                   kombu's hash of unacked messages by delivery tag
KEYS[7]  unacked_index             kombu's zset of unacked delivery tags
ARGV[1]  entry JSON ("" writes no entry: FEATURE_DEAD_LETTER=false or dead_letter=False)
ARGV[2]  job id
ARGV[3]  worker id of the run ("" removes the registry entry whoever owns it)
ARGV[4]  attempt the record keeps
ARGV[5]  now (epoch seconds)
ARGV[6]  state TTL (seconds)
ARGV[7]  "1" when the execution guard is on
ARGV[8]  "1" to release the idempotency key if the job still owns it
ARGV[9]  delivery tag of the message ("" when unknown)
ARGV[10] DEAD_LETTER_MAX_ENTRIES: the list is capped on every write (oldest
         entries beyond it are dropped), so its memory never grows with traffic;
         the beat task trims by age
Returns  1 if an entry was written, else 0

Removing the message from kombu's unacked hash here means a crash between
this step and Celery's ack neither loses the job (the entry is written) nor
runs it again (nothing is left to restore); the later ack is a no-op.
]]
local job_id, owner = ARGV[2], ARGV[3]

if ARGV[7] == "1" then
  local ok, st = pcall(cjson.decode, redis.call("GET", KEYS[2]) or "")
  local p, ps = nil, nil
  if ok and type(st) == "table" then
    p, ps = st.p, st.ps  -- a new publish under this id may still run (see job_start)
  end
  local record = cjson.encode({s = "dead", a = tonumber(ARGV[4]), w = owner, t = tonumber(ARGV[5]),
                               p = p, ps = ps})
  redis.call("SET", KEYS[2], record, "EX", tonumber(ARGV[6]))
end

local raw = redis.call("HGET", KEYS[3], job_id)
if raw then
  local ok, entry = pcall(cjson.decode, raw)
  if owner == "" or (not ok) or type(entry) ~= "table" or entry.worker == owner then
    redis.call("HDEL", KEYS[3], job_id)
    redis.call("ZREM", KEYS[4], job_id)
  end
end

if ARGV[8] == "1" and redis.call("GET", KEYS[5]) == job_id then
  redis.call("DEL", KEYS[5])
end

if ARGV[9] ~= "" then
  redis.call("HDEL", KEYS[6], ARGV[9])
  redis.call("ZREM", KEYS[7], ARGV[9])
end

if ARGV[1] ~= "" then
  local length = redis.call("LPUSH", KEYS[1], ARGV[1])
  local cap = tonumber(ARGV[10])
  if cap and length > cap then
    redis.call("LTRIM", KEYS[1], 0, cap - 1)
  end
  return 1
end
return 0
