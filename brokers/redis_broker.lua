-- conveyor's Redis broker: every state change of a message happens here, atomically
-- (enqueue, the hot path, has its own small script: redis_enqueue.lua).
--
-- Called as EVALSHA sha numkeys KEYS... op args... with ARGV[1] naming the operation.
-- Every queue is passed as the same 11 keys, in this order (see brokers/redis.py):
--   1 ready     LIST  message ids ready now, consumed from the left
--   2 delayed   ZSET  id -> due time (ms, server clock)
--   3 reserved  ZSET  id -> lease expiry (ms, server clock)
--   4 body      HASH  id -> message bytes
--   5 attempts  HASH  id -> deliveries so far; also the lease token (see below)
--   6 wake      LIST  at most one token; blocked consumers BLPOP it
--   7 dead      ZSET  id -> time dead-lettered (µs, strictly increasing)
--   8 deadbody  HASH  id -> message bytes
--   9 reason    HASH  id -> why it was dead-lettered
--  10 ranked    ZSET  ids ready now with a priority above 0, score (9 - priority) * 1e14 +
--                     seq: served before `ready`, highest priority first, FIFO within one
--  11 priority  HASH  id -> priority, for messages above 0 (kept until ack/dead/purge, so
--                     a nacked, delayed or lease-expired message goes back to its level);
--                     its field '~seq' counts arrivals, the FIFO order within a level
--
-- Priority 0, the default, never touches keys 10 and 11: the hot path is unchanged.
--
-- Lease token: every delivery increments the message's attempts, so the attempts count a
-- consumer got from reserve identifies its delivery. ack/nack/extend/dead check it, so a
-- consumer whose lease ran out cannot touch the next delivery.
--
-- Times come from the server's clock (TIME) so hosts with skewed clocks agree. Redis >= 5
-- replicates scripts by their effects, which is what makes TIME before a write legal.

local K = 11
local LEVEL = 1e14  -- more arrivals than a queue sees; scores stay exact integers in a double
local op = ARGV[1]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function queue_keys(i)
  local b = (i - 1) * K
  return {ready = KEYS[b + 1], delayed = KEYS[b + 2], reserved = KEYS[b + 3],
          body = KEYS[b + 4], attempts = KEYS[b + 5], wake = KEYS[b + 6],
          dead = KEYS[b + 7], deadbody = KEYS[b + 8], reason = KEYS[b + 9],
          ranked = KEYS[b + 10], priority = KEYS[b + 11]}
end

-- One token is enough: a woken consumer that leaves messages behind passes the token on.
local function wake(q)
  if redis.call('LLEN', q.wake) == 0 then
    redis.call('RPUSH', q.wake, '1')
  end
end

-- Held: still reserved under this delivery's token. With `now`, the lease must also be
-- unexpired (extend); ack/nack/dead pass no `now`: a holder whose lease ran out but whose
-- message nobody took yet may still settle it, which saves a needless redelivery.
local function held(q, id, token, now)
  local expiry = redis.call('ZSCORE', q.reserved, id)
  if not expiry or (now and tonumber(expiry) <= now) then
    return false
  end
  return redis.call('HGET', q.attempts, id) == token
end

-- Calls with many arguments go in chunks: Lua's unpack() has a stack limit.
local function chunked(cmd, key, items)
  for i = 1, #items, 1000 do
    redis.call(cmd, key, unpack(items, i, math.min(i + 999, #items)))
  end
end

-- Make ids ready: priority-0 ones to the back (or, with `front`, the front) of `ready`, the
-- others into `ranked` at their level (at its front with `front`).
local function next_seq(q)
  return redis.call('HINCRBY', q.priority, '~seq', 1)
end

local function make_ready(q, ids, front)
  if redis.call('HLEN', q.priority) == 0 then
    redis.call(front and 'LPUSH' or 'RPUSH', q.ready, unpack(ids))
    return
  end
  local plain = {}
  for _, id in ipairs(ids) do
    local p = redis.call('HGET', q.priority, id)
    if p then
      redis.call('ZADD', q.ranked, (9 - tonumber(p)) * LEVEL + (front and 0 or next_seq(q)), id)
    else
      plain[#plain + 1] = id
    end
  end
  if #plain > 0 then
    redis.call(front and 'LPUSH' or 'RPUSH', q.ready, unpack(plain))
  end
end

-- Due delayed messages join the back of ready; expired leases the front (they waited longest).
-- This is what recovers a dead worker's messages: no separate daemon is needed.
local function promote(q, now)
  local due = redis.call('ZRANGEBYSCORE', q.delayed, '-inf', now, 'LIMIT', 0, 1000)
  if #due > 0 then
    make_ready(q, due, false)
    redis.call('ZREM', q.delayed, unpack(due))
  end
  local lost = redis.call('ZRANGEBYSCORE', q.reserved, '-inf', now, 'LIMIT', 0, 1000)
  if #lost > 0 then
    make_ready(q, lost, true)
    redis.call('ZREM', q.reserved, unpack(lost))
  end
end

local function ready_count(q)
  return redis.call('LLEN', q.ready) + redis.call('ZCARD', q.ranked)
end

-- Up to `n` ready ids: ranked ones (highest priority first), then plain ones.
local function take(q, n)
  local ids = {}
  local top = redis.call('ZPOPMIN', q.ranked, n)
  for i = 1, #top, 2 do ids[#ids + 1] = top[i] end
  if #ids < n then
    local plain = redis.call('LPOP', q.ready, n - #ids)
    if plain then
      for _, id in ipairs(plain) do ids[#ids + 1] = id end
    end
  end
  return ids
end

local function first_score(key)
  local head = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if #head == 0 then return nil end
  return tonumber(head[2])
end

local ops = {}

-- KEYS: 9 per queue, in priority order. ARGV: lease_ms, limit.
-- -> {wait_hint_ms, queue_index, id, body, attempts, ...}; wait_hint_ms is -1 when nothing
-- is delayed or reserved, else how long until the next delayed message or lease comes due.
function ops.reserve()
  local now = now_ms()
  local expiry = now + tonumber(ARGV[2])
  local left = tonumber(ARGV[3])
  local out = {-1}
  for qi = 1, #KEYS / K do
    if left <= 0 then break end
    local q = queue_keys(qi)
    promote(q, now)
    local ids = take(q, left)
    if #ids > 0 then
      local leases = {}
      for _, id in ipairs(ids) do
        local body = redis.call('HGET', q.body, id)
        if body then
          local attempts = redis.call('HINCRBY', q.attempts, id, 1)
          leases[#leases + 1] = expiry
          leases[#leases + 1] = id
          out[#out + 1] = qi
          out[#out + 1] = id
          out[#out + 1] = body
          out[#out + 1] = attempts
          left = left - 1
        else
          redis.call('HDEL', q.attempts, id)  -- body gone (purged): drop the orphan id
          redis.call('HDEL', q.priority, id)
        end
      end
      if #leases > 0 then
        chunked('ZADD', q.reserved, leases)  -- score/member pairs: chunks of 1000 stay paired
      end
    end
    if ready_count(q) > 0 then
      wake(q)
    else
      redis.call('DEL', q.wake)  -- nothing to wake for: a stale token would cost a spin
    end
  end
  if #out == 1 then
    local next_due = nil
    for qi = 1, #KEYS / K do
      local q = queue_keys(qi)
      for _, key in ipairs({q.delayed, q.reserved}) do
        local score = first_score(key)
        if score and (not next_due or score < next_due) then next_due = score end
      end
    end
    if next_due then out[1] = math.max(next_due - now, 0) end
  end
  return out
end

-- ARGV: id, token -> 1 when removed, 0 when the lease was already lost
function ops.ack()
  local q, id = queue_keys(1), ARGV[2]
  if not held(q, id, ARGV[3]) then return 0 end
  redis.call('ZREM', q.reserved, id)
  redis.call('HDEL', q.body, id)
  redis.call('HDEL', q.attempts, id)
  redis.call('HDEL', q.priority, id)
  return 1
end

-- ARGV: id1, token1, id2, token2, ... -> how many were removed (each as ack would)
function ops.ackmany()
  local q, gone = queue_keys(1), {}
  for i = 2, #ARGV, 2 do
    if held(q, ARGV[i], ARGV[i + 1]) then
      gone[#gone + 1] = ARGV[i]
    end
  end
  if #gone > 0 then
    chunked('ZREM', q.reserved, gone)
    chunked('HDEL', q.body, gone)
    chunked('HDEL', q.attempts, gone)
    if redis.call('HLEN', q.priority) > 0 then chunked('HDEL', q.priority, gone) end
  end
  return #gone
end

-- ARGV: id, token, delay_ms -> 1 when given back, 0 when the lease was already lost
function ops.nack()
  local q, id, now = queue_keys(1), ARGV[2], now_ms()
  if not held(q, id, ARGV[3]) then return 0 end
  redis.call('ZREM', q.reserved, id)
  local delay = tonumber(ARGV[4])
  if delay > 0 then
    redis.call('ZADD', q.delayed, now + delay, id)
  else
    make_ready(q, {id}, true)
  end
  wake(q)
  return 1
end

-- ARGV: id, token, lease_ms -> 1 when extended, 0 when the lease was already lost
function ops.extend()
  local q, id, now = queue_keys(1), ARGV[2], now_ms()
  if not held(q, id, ARGV[3], now) then return 0 end
  redis.call('ZADD', q.reserved, now + tonumber(ARGV[4]), id)
  return 1
end

-- ARGV: id, token, reason -> 1 when moved, 0 when the lease was lost (the message stays
-- live and is delivered again, so nothing is lost)
function ops.dead()
  local q, id, now = queue_keys(1), ARGV[2], now_ms()
  if not held(q, id, ARGV[3]) then return 0 end
  local body = redis.call('HGET', q.body, id)
  redis.call('ZREM', q.reserved, id)
  redis.call('HDEL', q.body, id)
  redis.call('HDEL', q.attempts, id)
  redis.call('HDEL', q.priority, id)
  -- Scores in µs, strictly increasing, so the listing keeps the order messages died in.
  local score = now * 1000
  local last = redis.call('ZRANGE', q.dead, -1, -1, 'WITHSCORES')
  if #last > 0 and tonumber(last[2]) >= score then score = tonumber(last[2]) + 1 end
  redis.call('ZADD', q.dead, score, id)
  redis.call('HSET', q.deadbody, id, body)
  redis.call('HSET', q.reason, id, ARGV[4])
  return 1
end

-- Read-only: due delayed messages and expired leases count as ready, as reserve would see them.
-- -> {ready, delayed, reserved, dead}
function ops.stats()
  local q, now = queue_keys(1), now_ms()
  local due = redis.call('ZCOUNT', q.delayed, '-inf', now)
  local lost = redis.call('ZCOUNT', q.reserved, '-inf', now)
  return {ready_count(q) + due + lost,
          redis.call('ZCARD', q.delayed) - due,
          redis.call('ZCARD', q.reserved) - lost,
          redis.call('ZCARD', q.dead)}
end

-- Deletes ready and delayed messages (not reserved, not dead) -> number deleted. A message
-- whose lease ran out is ready again: promote first, or it would survive the purge.
function ops.purge()
  local q = queue_keys(1)
  promote(q, now_ms())
  local ids = redis.call('LRANGE', q.ready, 0, -1)
  for _, id in ipairs(redis.call('ZRANGE', q.delayed, 0, -1)) do ids[#ids + 1] = id end
  for _, id in ipairs(redis.call('ZRANGE', q.ranked, 0, -1)) do ids[#ids + 1] = id end
  if #ids > 0 then
    chunked('HDEL', q.body, ids)
    chunked('HDEL', q.attempts, ids)
    chunked('HDEL', q.priority, ids)
  end
  redis.call('DEL', q.ready, q.delayed, q.ranked)
  return #ids
end

-- ARGV: limit -> {id, body, reason, dead_at_us, ...}, oldest first
function ops.deadlist()
  local q = queue_keys(1)
  local out = {}
  local rows = redis.call('ZRANGE', q.dead, 0, tonumber(ARGV[2]) - 1, 'WITHSCORES')
  for i = 1, #rows, 2 do
    local id = rows[i]
    out[#out + 1] = id
    out[#out + 1] = redis.call('HGET', q.deadbody, id) or ''
    out[#out + 1] = redis.call('HGET', q.reason, id) or ''
    out[#out + 1] = rows[i + 1]
  end
  return out
end

-- ARGV: ids... (none: all of the queue's) -> number deleted
function ops.deldead()
  local q = queue_keys(1)
  if #ARGV == 1 then
    local n = redis.call('ZCARD', q.dead)
    redis.call('DEL', q.dead, q.deadbody, q.reason)
    return n
  end
  local n = 0
  for i = 2, #ARGV, 1000 do
    local j = math.min(i + 999, #ARGV)
    n = n + redis.call('ZREM', q.dead, unpack(ARGV, i, j))
    redis.call('HDEL', q.deadbody, unpack(ARGV, i, j))
    redis.call('HDEL', q.reason, unpack(ARGV, i, j))
  end
  return n
end

-- ARGV: delay_ms, priority (1..9), id1, body1, id2, body2, ... -> number stored. Priority 0
-- goes through redis_enqueue.lua instead.
function ops.enqueue()
  local q, now = queue_keys(1), now_ms()
  local delay, p = tonumber(ARGV[2]), tonumber(ARGV[3])
  for i = 4, #ARGV, 2 do
    local id = ARGV[i]
    redis.call('HSET', q.body, id, ARGV[i + 1])
    redis.call('HSET', q.priority, id, p)
    if delay > 0 then
      redis.call('ZADD', q.delayed, now + delay, id)
    else
      redis.call('ZADD', q.ranked, (9 - p) * LEVEL + next_seq(q), id)
    end
  end
  wake(q)
  return (#ARGV - 3) / 2
end

local fn = ops[op]
if not fn then
  return redis.error_reply('conveyor: unknown broker operation ' .. tostring(op))
end
return fn()
