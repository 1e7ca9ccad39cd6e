--[[ unacked_remove: acknowledge a kombu message (what kombu's QoS.ack does in MULTI), as one step
that can be followed by WAIT on the same connection (replica acknowledgement).

KEYS[1]  unacked          hash: delivery tag -> kombu envelope
KEYS[2]  unacked_index    sorted set: delivery tag -> delivery time
ARGV[1]  the delivery tag
Returns  1 if the message was still recorded as delivered, else 0
]]
redis.call("ZREM", KEYS[2], ARGV[1])
return redis.call("HDEL", KEYS[1], ARGV[1])
