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
for i = 2, #ARGV, 2 do
  redis.call('HSET', body, ARGV[i], ARGV[i + 1])
  if due then
    redis.call('ZADD', delayed, due, ARGV[i])
  else
    redis.call('RPUSH', ready, ARGV[i])
  end
end
-- One token wakes one blocked consumer, which passes it on while messages remain. Also for
-- delayed messages: the woken consumer shortens its wait to the new due time.
if redis.call('LLEN', wake) == 0 then
  redis.call('RPUSH', wake, '1')
end
return (#ARGV - 1) / 2
