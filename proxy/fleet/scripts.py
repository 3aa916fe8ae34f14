"""The fleet's Lua scripts: each is one round trip, and Redis runs it whole (no race between sidecars).

Keys of one budget share a hash tag (``{...}``), so a Redis Cluster keeps them on one node.
Times are the Redis server's (``TIME``), in milliseconds, so the sidecars' clocks never matter.

Rates are GCRA (the generic cell rate algorithm): a budget stores the theoretical arrival
time (TAT) of its next unit; a call of cost ``c`` at ``now`` moves it to
``max(TAT, now) + c·interval`` and is allowed while that is at most ``burst·interval``
ahead of ``now``. ``burst`` is one second's worth of the limit (at least one unit), so a
minute never holds more than the limit plus 1/60 of it.
"""

from __future__ import annotations

from proxy.cache.redis import Script

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""


def _free(
    leases: str, held: str, tpm_tat: str, tpm: str, delta: str, first: int, wanting: str, shares: str, me: str
) -> str:
    """Lua that frees the lease ids ``ARGV[first..]`` and moves the tpm TAT by ``delta`` tokens,
    and ``me``'s share of it too while others wait (see ``ACQUIRE``): a call that used less than it
    reserved gives the rest back to both, or a sidecar would be held to its share of reservations."""
    return f"""
for i = {first}, #ARGV do
  if redis.call('ZREM', {leases}, ARGV[i]) == 1 then
    local holder = string.match(ARGV[i], '^[^:]+')
    if redis.call('HINCRBY', {held}, holder, -1) <= 0 then redis.call('HDEL', {held}, holder) end
  end
end
if tonumber({tpm}) > 0 and tonumber({delta}) ~= 0 then
  local tat = tonumber(redis.call('GET', {tpm_tat}) or now)
  if tat < now then tat = now end
  tat = tat + tonumber({delta}) * 60000 / tonumber({tpm})
  if tat > now then
    redis.call('SET', {tpm_tat}, tostring(tat), 'PX', math.ceil(tat - now) + 1000)
  else
    redis.call('DEL', {tpm_tat})
  end
  local mine = redis.call('ZSCORE', {shares}, 't:' .. {me})
  if mine then
    -- at the pace the share was taken: the tpm over the sidecars waiting, this one among them
    local sharing = redis.call('ZCOUNT', {wanting}, '(' .. now, '+inf')
    if not redis.call('ZSCORE', {wanting}, {me}) then sharing = sharing + 1 end
    mine = tonumber(mine) + tonumber({delta}) * 60000 * sharing / tonumber({tpm})
    redis.call('ZADD', {shares}, math.max(mine, now), 't:' .. {me})
  end
end
"""


#: KEYS: leases (zset id -> expiry), held (hash sidecar -> leases), wanting (zset sidecar -> until
#: when it counts as waiting), rpm TAT, tpm TAT, cool (a shared cool-down's key), shares (zset
#: "r:"/"t:" + sidecar -> the TAT of its share of the rpm / tpm).
#: ARGV: sidecar id, max_concurrent, lease ttl ms, rpm, tpm (0 = no such limit; these five are
#: fixed per budget and sent pre-encoded), lease id, tokens, then what ended calls give back (as
#: ``RELEASE``): a token delta and lease ids.
#: Returns {status, wait ms, leases in use, leases expired now}: status 0 granted, 1 at the
#: concurrency limit (or past this sidecar's fair share while others wait), 2 rate (the fleet's,
#: or this sidecar's share of it while others wait), 3 cooling.
#:
#: Fair shares: a sidecar denied is "waiting" until a second after the wait it was told. While
#: others wait, a sidecar may hold at most an equal share of the leases, and take at most an
#: equal share of each rate (a GCRA of its own at rate/n, with one second of it as its burst), so
#: that asking sooner or more often does not buy a bigger share.
ACQUIRE = Script(
    _NOW
    + _free("KEYS[1]", "KEYS[2]", "KEYS[5]", "ARGV[5]", "ARGV[8]", 9, "KEYS[3]", "KEYS[7]", "ARGV[1]")
    + """
local cool = redis.call('PTTL', KEYS[6])
if cool > 0 then return {3, cool, 0, 0} end
local me, lease = ARGV[1], ARGV[6]
local limit, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
local rpm, tpm, tokens = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[7])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local others = redis.call('ZCARD', KEYS[3])
if others > 0 and redis.call('ZSCORE', KEYS[3], me) then others = others - 1 end
local function keep(key, ms)  -- a key lives at least ``ms`` more
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, math.ceil(ms)) end
end
local function deny(status, wait, in_use, expired)
  redis.call('ZADD', KEYS[3], now + wait + 1000, me)
  keep(KEYS[3], wait + 2000)
  return {status, math.ceil(wait), in_use, expired}
end
local expired, in_use = 0, 0
if limit > 0 then
  local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
  for _, id in ipairs(gone) do
    redis.call('ZREM', KEYS[1], id)
    local holder = string.match(id, '^[^:]+')
    if redis.call('HINCRBY', KEYS[2], holder, -1) <= 0 then redis.call('HDEL', KEYS[2], holder) end
  end
  expired = #gone
  in_use = redis.call('ZCARD', KEYS[1])
  local full = in_use >= limit
  if not full and others > 0 then
    full = tonumber(redis.call('HGET', KEYS[2], me) or '0') >= math.ceil(limit / (others + 1))
  end
  if full then return deny(1, 0, in_use, expired) end
end
-- A GCRA step: the new TAT, and how long until ``cost`` fits (> 0: not yet).
local function gcra(tat, per_minute, cost)
  local interval = 60000 / per_minute
  if tat < now then tat = now end
  local new = tat + cost * interval
  return new, new - now - math.max(per_minute / 60, 1) * interval
end
-- The shares are kept only while others wait (when none does, each one's TAT would be now or
-- less, as when it starts): the common case reads and writes no more than the fleet's TATs.
if others > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', now) end
local function rate(key, share, per_minute, cost)
  local fleet, wait = gcra(tonumber(redis.call('GET', key) or now), per_minute, cost)
  if others == 0 then return fleet, nil, wait end
  -- This sidecar's share: it may start while its own TAT is within a second, whatever ``cost``
  -- (a call's cost may be more than a share's burst).
  local mine = tonumber(redis.call('ZSCORE', KEYS[7], share) or now)
  if mine < now then mine = now end
  if mine - now - 1000 > wait then wait = mine - now - 1000 end
  return fleet, mine + cost * 60000 * (others + 1) / per_minute, wait
end
local function take(key, tat, share, mine)
  redis.call('SET', key, tostring(tat), 'PX', math.ceil(tat - now) + 1000)
  if mine then
    redis.call('ZADD', KEYS[7], mine, share)
    keep(KEYS[7], mine - now + 1000)
  end
end
local wait, rpm_tat, tpm_tat, rpm_mine, tpm_mine = 0, 0, 0, nil, nil
if rpm > 0 then
  local w
  rpm_tat, rpm_mine, w = rate(KEYS[4], 'r:' .. me, rpm, 1)
  if w > wait then wait = w end
end
if tpm > 0 and tokens > 0 then
  local w
  tpm_tat, tpm_mine, w = rate(KEYS[5], 't:' .. me, tpm, tokens)
  if w > wait then wait = w end
end
if wait > 0 then return deny(2, wait, in_use, expired) end
if rpm > 0 then take(KEYS[4], rpm_tat, 'r:' .. me, rpm_mine) end
if tpm > 0 and tokens > 0 then take(KEYS[5], tpm_tat, 't:' .. me, tpm_mine) end
if limit > 0 then
  redis.call('ZADD', KEYS[1], now + ttl, lease)
  redis.call('HINCRBY', KEYS[2], me, 1)
  if in_use == 0 then  -- new keys; while leases are held, RENEW keeps them
    redis.call('PEXPIRE', KEYS[1], ttl * 10)
    redis.call('PEXPIRE', KEYS[2], ttl * 10)
  end
  in_use = in_use + 1
end
return {0, 0, in_use, expired}
"""
)

#: KEYS: leases, held, tpm TAT, wanting, shares. ARGV: sidecar id, tpm, token delta (real usage
#: minus reserved), lease ids... Ends calls: frees their leases and moves the token budget (and
#: the sidecar's share of it) by what they really used. Sent only when no ``ACQUIRE`` of the
#: budget came soon enough to carry them.
RELEASE = Script(
    _NOW
    + _free("KEYS[1]", "KEYS[2]", "KEYS[3]", "ARGV[2]", "ARGV[3]", 4, "KEYS[4]", "KEYS[5]", "ARGV[1]")
    + "return 1\n"
)

#: KEYS: leases, held. ARGV: sidecar id, lease ttl ms, lease ids... "These are my leases": each is
#: renewed, and put back if Redis lost it (a restart; a stall past the TTL), so calls granted from
#: the local share while Redis was away count again once it is back. Returns how many were put back.
RENEW = Script(
    _NOW
    + """
local ttl = tonumber(ARGV[2])
local added = 0
for i = 3, #ARGV do added = added + redis.call('ZADD', KEYS[1], now + ttl, ARGV[i]) end
if added > 0 then redis.call('HINCRBY', KEYS[2], ARGV[1], added) end
redis.call('PEXPIRE', KEYS[1], ttl * 10)
redis.call('PEXPIRE', KEYS[2], ttl * 10)
return added
"""
)

#: KEYS: members (zset sidecar -> expiry). ARGV: sidecar id, ttl ms. Returns the live sidecars.
HEARTBEAT = Script(
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return redis.call('ZCARD', KEYS[1])
"""
)

#: KEYS: cool. ARGV: ms. A longer cool-down already there is kept.
COOL = Script(
    """
local left = redis.call('PTTL', KEYS[1])
if left < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], '1', 'PX', ARGV[1]) end
return 1
"""
)
