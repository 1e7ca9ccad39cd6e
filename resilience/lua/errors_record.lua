-- Record a batch of error records: timeline entries, pattern counts, trimming.
--
-- KEYS[1]  errors:timeline  sorted set, score = epoch ms, member = JSON record
-- KEYS[2]  errors:patterns  hash, component:operation:error_type -> count
-- ARGV[1]  cutoff in epoch ms: timeline entries scored below it are removed
-- ARGV[2]  most timeline entries to keep (the newest)
-- ARGV[3..] triples: score (epoch ms), JSON record, pattern
-- Returns  the number of records added
local added = 0
for i = 3, #ARGV, 3 do
  redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('HINCRBY', KEYS[2], ARGV[i + 2], 1)
  added = added + 1
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
local keep = tonumber(ARGV[2])
local size = redis.call('ZCARD', KEYS[1])
if size > keep then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, size - keep - 1)
end
return added
