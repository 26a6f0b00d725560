-- conveyor's Redis broker, enqueue: kept apart from redis_broker.lua (which documents the key
-- layout) so the hottest call runs the least Lua.
--
-- KEYS: ready LIST, delayed ZSET, body HASH, wake LIST of one queue.
-- ARGV: delay_ms, id1, body1, id2, body2, ...   -> number of messages stored
local ready, delayed, body, wake = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local delay = tonumber(ARGV[1])
local due
if delay > 0 then
  -- The server's clock, so producers and consumers on skewed hosts agree on the due time.
  local t = redis.call('TIME')
  due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + delay
end
-- Whole-batch commands, not one per message: a batch of 1,000 is two calls, not 2,000.
-- (Callers keep a batch under Lua's unpack limit of about 8,000 values.)
redis.call('HSET', body, unpack(ARGV, 2))
local n = (#ARGV - 1) / 2
local members = {}
if due then
  for i = 1, n do
    members[2 * i - 1] = due
    members[2 * i] = ARGV[2 * i]
  end
  redis.call('ZADD', delayed, unpack(members))
else
  for i = 1, n do
    members[i] = ARGV[2 * i]
  end
  redis.call('RPUSH', ready, unpack(members))
end
-- One token wakes one blocked consumer, which passes it on while messages remain. Also for
-- delayed messages: the woken consumer shortens its wait to the new due time.
if redis.call('LLEN', wake) == 0 then
  redis.call('RPUSH', wake, '1')
end
return n
