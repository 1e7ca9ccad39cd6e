--[[ schedule_promote: move due delayed runs to their queues.

The caller reads the due ids and their payloads first (ZRANGEBYSCORE ...
LIMIT, HMGET) so that every queue key can be passed in KEYS; this script
re-checks each id, so concurrent promoters (every worker polls, beat too)
move each run exactly once.

KEYS[1]    jobs:scheduled            zset  job id -> due time
KEYS[2]    jobs:scheduled:payloads   hash  job id -> JSON {queue, message}
KEYS[3..]  the queue list keys named by the payloads
ARGV[1]    now (epoch seconds)
ARGV[2..]  job id, index into KEYS of its queue, pairs
Returns    the number of runs moved
]]
local now = tonumber(ARGV[1])
local moved = 0
for i = 2, #ARGV, 2 do
  local job_id = ARGV[i]
  local queue = KEYS[tonumber(ARGV[i + 1])]
  local due = redis.call("ZSCORE", KEYS[1], job_id)
  if due and tonumber(due) <= now then
    local raw = redis.call("HGET", KEYS[2], job_id)
    local ok, payload = pcall(cjson.decode, raw or "")
    if ok and type(payload) == "table" and type(payload.message) == "string" then
      if payload.queue == queue then
        redis.call("LPUSH", queue, payload.message)
        redis.call("ZREM", KEYS[1], job_id)
        redis.call("HDEL", KEYS[2], job_id)
        moved = moved + 1
      end
      -- else: re-scheduled since the caller read it; the next round moves it
    else
      -- missing or unreadable payload: drop the entry instead of retrying it forever
      redis.call("ZREM", KEYS[1], job_id)
      redis.call("HDEL", KEYS[2], job_id)
    end
  end
end
return moved
