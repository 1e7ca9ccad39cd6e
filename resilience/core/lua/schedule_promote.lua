--[[ schedule_promote: move due delayed runs to their queues.

The caller reads the due ids and their payloads first (ZRANGEBYSCORE ...
LIMIT, HMGET), sets aside the payloads that are not readable (to the
quarantine), and passes every queue key in KEYS; this script re-checks each
id, so concurrent promoters (every worker polls, beat too) move each run
exactly once. A run this script cannot move (its payload unreadable here, or
its queue key holding another type) is returned to the caller, and the
other runs go on: one bad run never holds back the rest.

KEYS[1]    jobs:scheduled            zset  job id -> due time
KEYS[2]    jobs:scheduled:payloads   hash  job id -> JSON {queue, message}
KEYS[3..]  the queue list keys named by the payloads
ARGV[1]    now (epoch seconds)
ARGV[2..]  job id, index into KEYS of its queue, pairs
Returns    {number of runs moved, job id, problem, job id, problem, ...} with the
           runs that could not be moved
]]
local now = tonumber(ARGV[1])
local moved = 0
local refused = {}
for i = 2, #ARGV, 2 do
  local job_id = ARGV[i]
  local queue = KEYS[tonumber(ARGV[i + 1])]
  local due = redis.call("ZSCORE", KEYS[1], job_id)
  if due and tonumber(due) <= now then
    local raw = redis.call("HGET", KEYS[2], job_id)
    local ok, payload = pcall(cjson.decode, raw or "")
    if ok and type(payload) == "table" and type(payload.message) == "string" then
      if payload.queue == queue then
        local pushed = redis.pcall("LPUSH", queue, payload.message)
        if type(pushed) == "table" and pushed.err then
          table.insert(refused, job_id)
          table.insert(refused, "queue " .. queue .. ": " .. tostring(pushed.err))
        else
          redis.call("ZREM", KEYS[1], job_id)
          redis.call("HDEL", KEYS[2], job_id)
          moved = moved + 1
        end
      end
      -- else: re-scheduled since the caller read it; the next round moves it
    elseif raw then
      table.insert(refused, job_id)
      table.insert(refused, "payload unreadable")
    end
  end
end
local out = {moved}
for _, item in ipairs(refused) do
  table.insert(out, item)
end
return out
