--[[ job_unstart: withdraw a claim whose run never started.

A worker that lost Redis while calling job_start cannot tell whether its
claim was written. It puts the message back and, once Redis answers, calls
this: the execution record and the registry entry are removed only if they
still carry this claim's run token, so a later delivery that has claimed the
job meanwhile (on any worker) is never touched.

KEYS[1]  jobs:state:<job id>
KEYS[2]  jobs:active
KEYS[3]  jobs:active:deadlines
ARGV[1]  job id
ARGV[2]  run token of the claim to withdraw
Returns  1 if the claim was found and withdrawn, else 0
]]
local withdrawn = 0
local raw = redis.call("GET", KEYS[1])
if raw then
  local ok, st = pcall(cjson.decode, raw)
  if ok and type(st) == "table" and st.r == ARGV[2] then
    redis.call("DEL", KEYS[1])
    withdrawn = 1
  end
end
local entry_raw = redis.call("HGET", KEYS[2], ARGV[1])
if entry_raw then
  local ok, entry = pcall(cjson.decode, entry_raw)
  if ok and type(entry) == "table" and entry.run == ARGV[2] then
    redis.call("HDEL", KEYS[2], ARGV[1])
    redis.call("ZREM", KEYS[3], ARGV[1])
    withdrawn = 1
  end
end
return withdrawn
