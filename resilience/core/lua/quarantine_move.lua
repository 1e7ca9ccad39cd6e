--[[ quarantine_move: take bad records out of the keys they were read from and keep them in the quarantine.

A record leaves its key only if it is still what the caller read (a hash
field with the same value, a list element or sorted-set member still
there): a record rewritten meanwhile (by a worker's next heartbeat, say) is
left alone and not quarantined. "keep" records stay where they are (a whole
key of the wrong type, a row of the local spool) and are only recorded.

KEYS[1]   quarantine          hash  id -> JSON record
KEYS[2]   quarantine:index    zset  id -> epoch ms it was quarantined
KEYS[3..] the keys the records were read from, and their companion sorted sets
ARGV[1]   most records the quarantine keeps (the oldest beyond it are dropped)
ARGV[2]   now (epoch ms)
ARGV[3..] groups of 7:
          how        "hash" | "list" | "zset" | "keep"
          source     index into KEYS of the key the record was read from
          member     the hash field, list element or sorted-set member to remove
          expected   "hash": the value as read (removed only while unchanged)
          companion  index into KEYS of a sorted set that loses the same member too ("0": none)
          id         the quarantine record's id
          record     the quarantine record (JSON)
Returns   the ids of the records quarantined; an error, and nothing moved, when
          the quarantine keys themselves have the wrong type
]]
local function kind(key)
  return redis.call("TYPE", key)["ok"]
end
local qt, it = kind(KEYS[1]), kind(KEYS[2])
if (qt ~= "hash" and qt ~= "none") or (it ~= "zset" and it ~= "none") then
  return redis.error_reply("WRONGTYPE the quarantine keys hold the wrong kind of value")
end

local now = tonumber(ARGV[2])
local moved = {}
for i = 3, #ARGV, 7 do
  local how, source, member, expected = ARGV[i], KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2], ARGV[i + 3]
  local companion, id, record = tonumber(ARGV[i + 4]), ARGV[i + 5], ARGV[i + 6]
  local taken = false
  -- redis.pcall: a source key of the wrong type leaves its record where it is, and the rest goes on
  if how == "keep" then
    taken = true
  elseif how == "hash" then
    if redis.pcall("HGET", source, member) == expected then
      taken = redis.pcall("HDEL", source, member) == 1
    end
  elseif how == "list" then
    taken = redis.pcall("LREM", source, 1, member) == 1
  elseif how == "zset" then
    taken = redis.pcall("ZREM", source, member) == 1
  end
  if taken then
    if companion > 0 then
      redis.pcall("ZREM", KEYS[companion], member)
    end
    redis.call("HSET", KEYS[1], id, record)
    redis.call("ZADD", KEYS[2], now, id)
    table.insert(moved, id)
  end
end

local excess = redis.call("ZCARD", KEYS[2]) - tonumber(ARGV[1])
if excess > 0 then
  for _, id in ipairs(redis.call("ZRANGE", KEYS[2], 0, excess - 1)) do
    redis.call("HDEL", KEYS[1], id)
  end
  redis.call("ZREMRANGEBYRANK", KEYS[2], 0, excess - 1)
end
return moved
