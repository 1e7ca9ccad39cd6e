--[[ unacked_restore: put a kombu message back on its queue, exactly once.

Does what kombu's QoS.restore_by_tag does, plus the platform's bookkeeping,
in one step: the message goes back only if its ``unacked`` entry is still the
one the caller read (compare-and-swap), so two sweeps, a sweep and a worker's
hand-over, or either racing a late ack or kombu's own age-based restore, never
push it twice. An expected entry of "" means "no entry": a message a worker
popped but could not record in ``unacked`` before Redis went away.

KEYS[1]  unacked                 kombu hash   delivery tag -> JSON [payload, exchange, routing key]
KEYS[2]  unacked_index           kombu zset   delivery tag -> time delivered
KEYS[3]  the queue list          kombu list   (priority-suffixed as kombu's _q_for_pri)
KEYS[4]  jobs:active             hash         job id -> JSON registry entry
KEYS[5]  jobs:active:deadlines   zset         job id -> progress deadline
ARGV[1]  delivery tag
ARGV[2]  the unacked entry as read by the caller ("" = expected absent)
ARGV[3]  the payload to push (marked redelivered)
ARGV[4]  job id whose registry entry goes with it ("" for none)
ARGV[5]  worker id that entry must still name (the dead worker)
Returns  1 if the message was pushed back, 0 if it was acked or restored meanwhile

The index and registry bookkeeping (KEYS[2], KEYS[4], KEYS[5]) uses redis.pcall: a key of
the wrong type (reported by the sweep) never holds a message back.
]]
local current = redis.call("HGET", KEYS[1], ARGV[1])
if (current or "") ~= ARGV[2] then
  return 0
end
-- kombu consumes with BRPOP from the right: RPUSH puts it first in line, as kombu's restore does
redis.call("RPUSH", KEYS[3], ARGV[3])
redis.call("HDEL", KEYS[1], ARGV[1])
redis.pcall("ZREM", KEYS[2], ARGV[1])
if ARGV[4] ~= "" then
  local raw = redis.pcall("HGET", KEYS[4], ARGV[4])
  if type(raw) == "string" then
    local ok, entry = pcall(cjson.decode, raw)
    if (not ok) or type(entry) ~= "table" or entry.worker == ARGV[5] then
      redis.call("HDEL", KEYS[4], ARGV[4])
      redis.pcall("ZREM", KEYS[5], ARGV[4])
    end
  end
end
return 1
