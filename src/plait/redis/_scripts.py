"""The Lua scripts that keep shared limits on the Redis server.

Every key of a namespace carries the hash tag ``{namespace}``, so all of
them live in one hash slot (Redis Cluster runs each script on one node).
Time is always the server's (``TIME``, in microseconds): clients' clocks
never enter the arithmetic.

Keys of namespace ``ns``:

* ``{ns}:slot:<name>``: a sorted set of leases, scored by expiry time. A
  slot is free when the set, once expired leases are dropped, has fewer
  members than the limit.
* ``{ns}:rate:<name>``: a bucket, as GCRA keeps it: one number, the
  theoretical arrival time (TAT) of the next call. O(1) per call whatever
  the rate.
* ``{ns}:slotq:<name>`` / ``{ns}:rateq:<name>``: the processes' waiters
  refused by that limit, scored by when they joined: a release wakes only
  the first (one ``PUBLISH`` to its process), and waiters for tokens are
  told to come back one token apart, in order, instead of all at once.
* ``{ns}:limits``: limits stored with ``RedisLimits.set_limit``; they win
  over what processes declare.
* ``{ns}:declared``: the last value each limit was declared with, to warn
  when two processes declare one limit differently.
"""

from __future__ import annotations

__all__ = ["ADMIT", "LEAVE", "RELEASE", "RENEW"]

# Frees ``lease``'s slot in ``slot`` and wakes the first waiter of its queue
# ``q`` whose process still listens (PUBLISH answers how many did).
_FREE = """
local function free(slot, q, lease, prefix)
  if redis.call('ZREM', slot, lease) == 1 then
    while true do
      local head = redis.call('ZPOPMIN', q)
      if not head[1] then return end
      local client = string.match(head[1], '^([^|]+)|')
      if client and redis.call('PUBLISH', prefix .. client, head[1]) > 0 then
        return
      end
    end
  end
end
"""

# KEYS: limits, declared, then (slot, slotq) per slot, then (rate, rateq) per
# bucket, then (slot, slotq) per slot of the leases released first. ARGV:
# lease, waiter, ttl_us, n_slots, n_rates, poll_us, more, n_released, wake
# channel prefix, then (name, limit) per slot, then (name, interval_us,
# capacity, text) per bucket, then the released lease of each pair.
# Returns {status, wait_us, hint, contended, conflicting names...}: status 1 admitted
# (every slot and token taken), 0 a slot is busy (wait for a release notice,
# at most wait_us), 2 a bucket is empty (come back in wait_us). When ``more``
# is 1 (the process has another call waiting for these limits), an admitted
# call also queues that next call where it would be refused now, and says
# how long it will wait (wait_us) and for what (hint: 0 nothing, 1 a release
# notice, 2 a token): the next call then waits first and asks once, instead
# of asking, being refused and queued, then asking again. ``contended`` is 1
# when another waiter is queued for one of the call's slots: its release
# should then go at once rather than ride along with a later admission.
ADMIT = (
    _FREE
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local lease, waiter = ARGV[1], ARGV[2]
local ttl, nslots, nrates = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local poll, more = tonumber(ARGV[6]), ARGV[7] == '1'
local nrel, prefix = tonumber(ARGV[8]), ARGV[9]
local relkeys, relargs = 2 + 2 * nslots + 2 * nrates, #ARGV - nrel
for k = 1, nrel do
  free(KEYS[relkeys + 2 * k - 1], KEYS[relkeys + 2 * k], ARGV[relargs + k], prefix)
end
local stale = now - 10000000
local conflicts = {}

local function declare(field, value)
  local seen = redis.call('HGET', KEYS[2], field)
  if seen ~= value then
    if seen then conflicts[#conflicts + 1] = field end
    redis.call('HSET', KEYS[2], field, value)
  end
  return redis.call('HGET', KEYS[1], field)
end

local function queue(q)
  redis.call('ZREMRANGEBYSCORE', q, '-inf', stale)
  redis.call('ZADD', q, 'NX', now, waiter)
  redis.call('PEXPIRE', q, 60000)
  return redis.call('ZRANK', q, waiter)
end

local function refuse(status, wait)
  local out = {status, math.max(1000, math.ceil(wait)), 0, 1}
  for i = 1, #conflicts do out[#out + 1] = conflicts[i] end
  return out
end

local a = 10
local limits = {}
for i = 1, nslots do
  local name, limit = ARGV[a], ARGV[a + 1]
  a = a + 2
  local stored = declare('slot:' .. name, limit)
  if stored then limit = stored end
  limits[i] = tonumber(limit)
  local key = KEYS[1 + 2 * i]
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if redis.call('ZCARD', key) >= tonumber(limit) then
    queue(KEYS[2 + 2 * i])
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    local wait = poll
    if first[2] then wait = math.min(poll, tonumber(first[2]) - now) end
    return refuse(0, wait)
  end
end

local base = 2 + 2 * nslots
local tats, intervals, capacities = {}, {}, {}
for j = 1, nrates do
  local name, interval, capacity, text = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  a = a + 4
  local stored = declare('rate:' .. name, text)
  interval, capacity = tonumber(interval), tonumber(capacity)
  if stored then
    local si, sc = string.match(stored, '^(%S+) (%S+)')
    if si then interval, capacity = tonumber(si), tonumber(sc) end
  end
  local tat = tonumber(redis.call('GET', KEYS[base + 2 * j - 1]) or now)
  if tat < now then tat = now end
  local over = tat - (capacity - 1) * interval - now
  if over > 0 then
    local rank = queue(KEYS[base + 2 * j])
    return refuse(2, over + rank * interval)
  end
  tats[j], intervals[j], capacities[j] = tat, interval, capacity
end

local ttl_ms = math.ceil(ttl / 1000) + 1000
for i = 1, nslots do
  redis.call('ZADD', KEYS[1 + 2 * i], now + ttl, lease)
  redis.call('PEXPIRE', KEYS[1 + 2 * i], ttl_ms)
  redis.call('ZREM', KEYS[2 + 2 * i], waiter)
end
for j = 1, nrates do
  local tat = tats[j] + intervals[j]
  redis.call('SET', KEYS[base + 2 * j - 1], tostring(tat), 'PX',
             math.ceil((tat - now) / 1000) + 1000)
  redis.call('ZREM', KEYS[base + 2 * j], waiter)
end
local out = {1, 0, 0, 0}
for i = 1, nslots do
  if redis.call('ZCARD', KEYS[2 + 2 * i]) > 0 then out[4] = 1 end
end
if more then
  for i = 1, nslots do
    if redis.call('ZCARD', KEYS[1 + 2 * i]) >= limits[i] then
      queue(KEYS[2 + 2 * i])
      out[2], out[3] = poll, 1
      break
    end
  end
  if out[3] == 0 then
    for j = 1, nrates do
      local over = tats[j] + intervals[j] - (capacities[j] - 1) * intervals[j] - now
      if over > 0 then
        local rank = queue(KEYS[base + 2 * j])
        out[2], out[3] = math.ceil(over + rank * intervals[j]), 2
        break
      end
    end
  end
end
for i = 1, #conflicts do out[#out + 1] = conflicts[i] end
return out
"""
)

# KEYS: (slot, slotq) per slot of each lease released. ARGV: the wake channel
# prefix, then the lease held in each pair. Each slot freed wakes the first
# waiter of its queue whose process still listens.
RELEASE = (
    _FREE
    + """
for i = 1, #KEYS / 2 do
  free(KEYS[2 * i - 1], KEYS[2 * i], ARGV[i + 1], ARGV[1])
end
return 0
"""
)

# KEYS: one slot key per lease. ARGV: ttl_us, then the lease in each key.
# Returns 1 per lease renewed, 0 per lease found gone.
RENEW = """
local t = redis.call('TIME')
local expiry = tonumber(t[1]) * 1000000 + tonumber(t[2]) + tonumber(ARGV[1])
local ttl_ms = math.ceil(tonumber(ARGV[1]) / 1000) + 1000
local out = {}
for i = 1, #KEYS do
  if redis.call('ZSCORE', KEYS[i], ARGV[i + 1]) then
    redis.call('ZADD', KEYS[i], expiry, ARGV[i + 1])
    redis.call('PEXPIRE', KEYS[i], ttl_ms)
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

# KEYS: wait queues. ARGV: waiter. A waiter that gave up leaves its queues.
LEAVE = """
for i = 1, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
return 0
"""
