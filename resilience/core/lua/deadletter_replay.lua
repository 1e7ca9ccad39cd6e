--[[ deadletter_replay: take one entry out of the dead-letter queue and re-enqueue its job.

KEYS[1]  jobs:dead_letter          list, newest first
KEYS[2]  the queue list key the job goes back to
KEYS[3]  jobs:state:<job id>       the job's execution record
KEYS[4]  the job's stored result (Celery's result backend), so waiters see the new run
ARGV[1]  the entry exactly as stored
ARGV[2]  the kombu message envelope to push (a fresh attempt: retries 0)
Returns  1 if the entry was removed and the job enqueued, 0 if it was gone

Only the caller that removes the entry enqueues the job, so replaying one
entry from two terminals at once enqueues it once.
]]
if redis.call("LREM", KEYS[1], 1, ARGV[1]) == 1 then
  redis.call("LPUSH", KEYS[2], ARGV[2])
  redis.call("DEL", KEYS[3], KEYS[4])
  return 1
end
return 0
