-- Record a batch of error records: timeline entries, pattern counts, trimming.
--
-- A pattern count that is not an integer (written by hand or by another
-- version) starts again at 1 and its old value is returned for the
-- quarantine; a key of the wrong type is returned once and the rest of the
-- batch is still recorded.
--
-- KEYS[1]  errors:timeline  sorted set, score = epoch ms, member = JSON record
-- KEYS[2]  errors:patterns  hash, component:operation:error_type -> count
-- ARGV[1]  cutoff in epoch ms: timeline entries scored below it are removed
-- ARGV[2]  most timeline entries to keep (the newest)
-- ARGV[3..] triples: score (epoch ms), JSON record, pattern
-- Returns  {records added, then triples: "wrongtype", key, error | "count", pattern, old value}
local added = 0
local out = {0}
local wrong = {}
local function failed(reply, key)
  if type(reply) == 'table' and reply.err then
    if string.find(reply.err, 'WRONGTYPE', 1, true) then
      if not wrong[key] then
        wrong[key] = true
        table.insert(out, 'wrongtype')
        table.insert(out, key)
        table.insert(out, reply.err)
      end
      return 'wrongtype'
    end
    return 'error'
  end
  return nil
end
for i = 3, #ARGV, 3 do
  if not failed(redis.pcall('ZADD', KEYS[1], ARGV[i], ARGV[i + 1]), KEYS[1]) then
    added = added + 1
  end
  local pattern = ARGV[i + 2]
  if failed(redis.pcall('HINCRBY', KEYS[2], pattern, 1), KEYS[2]) == 'error' then
    table.insert(out, 'count')
    table.insert(out, pattern)
    table.insert(out, redis.call('HGET', KEYS[2], pattern) or '')
    redis.call('HSET', KEYS[2], pattern, 1)
  end
end
if not wrong[KEYS[1]] then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
  local keep = tonumber(ARGV[2])
  local size = redis.call('ZCARD', KEYS[1])
  if size > keep then
    redis.call('ZREMRANGEBYRANK', KEYS[1], 0, size - keep - 1)
  end
end
out[1] = added
return out
