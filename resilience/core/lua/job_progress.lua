--[[ job_progress: record progress of a running job, never resurrecting it.

KEYS[1]  jobs:active
KEYS[2]  jobs:active:deadlines
ARGV[1]  job id
ARGV[2]  worker id of this run
ARGV[3]  now (epoch seconds)
ARGV[4]  percent ("" when not given)
ARGV[5]  note ("" when not given)
ARGV[6]  new progress deadline (epoch seconds)
Returns  1 if updated, 0 if the entry is gone or owned by another run
]]
local raw = redis.call("HGET", KEYS[1], ARGV[1])
if not raw then return 0 end
local ok, entry = pcall(cjson.decode, raw)
if (not ok) or type(entry) ~= "table" or entry.worker ~= ARGV[2] then return 0 end
entry.last_progress_at = tonumber(ARGV[3])
if ARGV[4] ~= "" then entry.progress = tonumber(ARGV[4]) end
if ARGV[5] ~= "" then entry.note = ARGV[5] end
redis.call("HSET", KEYS[1], ARGV[1], cjson.encode(entry))
redis.call("ZADD", KEYS[2], "XX", tonumber(ARGV[6]), ARGV[1])
return 1
