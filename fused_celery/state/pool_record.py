"""A remote pool's record in Redis: creation, atomic state transitions (Lua) and reads.

This module knows Redis and the key layout of :mod:`fused_celery.state.keys`, not Celery: the Celery
engine (client side) and the task bodies (worker side) both go through :class:`PoolRecord`.

Every transition that workers and clients may race on is one Lua script, so it is atomic:

- ``create`` (client, at submit): the whole record, every key with its TTL, in one round trip.
- ``start`` (worker, before running a message's entries): skip the message if the record is gone
  or it is a duplicate publish; per entry skip it if cancelled, superseded by a newer attempt, or
  already finished; fail it as "worker lost" when the same attempt was delivered too often; serve
  it from the result cache; else mark it ``running`` and return its encoded arguments.
- ``finish`` (worker): record each entry's final outcome, or move it to its next attempt
  (automatic retry), and announce it on the pool's events channel (for a small pool, with the
  record's new state, so that a waiting client needs no read); then, for pools capped by
  ``max_workers``, choose the lane's next batch.
- ``cancel`` / ``retry`` (client).
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from fused_celery.errors import BrokerUnavailableError, PoolNotFoundError
from fused_celery.state import keys

#: A worker may begin the same attempt of an entry this many times (redeliveries after a lost
#: worker) before the attempt is failed as :class:`~fused_celery.errors.UdfWorkerLostError`.
MAX_DELIVERIES = 3

#: Characters of a retried attempt's logs kept in ``history``.
HISTORY_LOG_CHARS = 4096

STATUSES = ("pending", "running", "success", "error", "timeout", "cancelled")

#: Pools of at most this many entries are *small*: a client reads their states, outcomes and
#: logs along with the counts, and a worker's ``finish`` puts them in the pool's event.
SMALL_POOL_ENTRIES = 8

#: The largest event payload (JSON of a small pool's state) a worker publishes; a larger
#: state is announced by its version only, and clients read it.
EVENT_PAYLOAD_MAX_BYTES = 16 * 1024

#: A client's event listener keeps the latest payload of this many pools (it hears every pool).
EVENT_PAYLOADS_KEPT = 256

# --------------------------------------------------------------------------- connections

_clients: dict[str, redis.Redis] = {}
_clients_lock = threading.Lock()


def mask_url(url: str | None) -> str:
    """``url`` with any password replaced by ``***`` (for error messages)."""
    if not url:
        return repr(url)
    try:
        parts = urlsplit(url)
        if parts.password:
            netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
            return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        pass
    return url


def redis_client(url: str) -> redis.Redis:
    """A shared client for ``url`` that rides out short outages.

    Commands are retried with exponential backoff (about 30 s in all) on connection errors, so a
    Redis restart does not fail a running pool.
    """
    with _clients_lock:
        client = _clients.get(url)
        if client is None:
            client = redis.Redis.from_url(
                url,
                decode_responses=True,
                socket_connect_timeout=5,
                socket_timeout=60,
                health_check_interval=30,
                retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=30),
                retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
            )
            _clients[url] = client
        return client


_probes: dict[str, redis.Redis] = {}

#: ``url`` -> ``time.monotonic()`` when Redis there last answered (see :func:`mark_reachable`).
_answered: dict[str, float] = {}


def mark_reachable(url: str | None) -> None:
    """Remember that Redis at ``url`` just answered a command (see ``check_reachable(recent=)``)."""
    if url:
        _answered[url] = time.monotonic()


def check_reachable(
    url: str | None, timeout: float = 2.0, *, what: str = "broker", recent: float = 0.0
) -> None:
    """Raise :class:`BrokerUnavailableError` naming ``url`` unless Redis answers PING there.

    timeout: seconds to wait (default 2). what: how to call the server in the message.
    recent: skip the PING when Redis at ``url`` answered (a PING, or a command reported with
    :func:`mark_reachable`) within that many seconds (default 0: always PING).
    The probe client (no retries, short timeouts) is kept, so a check costs one round trip.
    """
    if not url:
        raise BrokerUnavailableError(
            f"no {what} URL configured: set fused_celery.options.broker_url or "
            "FUSED_CELERY_BROKER_URL (e.g. redis://127.0.0.1:6379/0)"
        )
    if recent > 0 and time.monotonic() - _answered.get(url, -math.inf) < recent:
        return
    with _clients_lock:
        probe = _probes.get(url)
        if probe is None:
            try:
                probe = redis.Redis.from_url(
                    url,
                    socket_connect_timeout=timeout,
                    socket_timeout=timeout,
                    retry=None,
                    retry_on_timeout=False,
                )
            except ValueError as exc:
                raise BrokerUnavailableError(
                    f"{what} URL {mask_url(url)} is malformed: {exc}"
                ) from None
            _probes[url] = probe
    try:
        probe.ping()
    except (redis.exceptions.RedisError, OSError) as exc:
        probe.connection_pool.disconnect()
        _answered.pop(url, None)
        raise BrokerUnavailableError(
            f"the {what} at {mask_url(url)} does not answer ({exc}); start Redis (for example "
            "`fused-celery up`) or fix FUSED_CELERY_BROKER_URL"
        ) from None
    mark_reachable(url)


class PoolEvents:
    """One pub/sub connection per Redis URL, shared by every pool this process watches.

    A daemon thread PSUBSCRIBEs to ``fc:pool:*:events`` and bumps a per-pool counter for each
    message; :meth:`wait` blocks until a pool's counter moves past a token taken earlier. The
    thread reconnects by itself; while it is disconnected, :attr:`connected` is False and
    callers fall back to polling. A token also names the subscription it was taken under, so
    a wait on a token from before a reconnect (events may have been missed) returns at once.
    """

    _instances: dict[str, PoolEvents] = {}

    def __init__(self, url: str) -> None:
        self.url = url
        self._cond = threading.Condition()
        self._versions: dict[str, int] = {}
        # pool -> (event count, JSON state, time.monotonic() when heard) of its latest event,
        # when that event carried the pool's state
        self._payloads: OrderedDict[str, tuple[int, str, float]] = OrderedDict()
        self._epoch = 0  # subscriptions made so far
        self._connected = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"fused-celery-events {mask_url(url)}", daemon=True
        )
        self._thread.start()

    @classmethod
    def for_url(cls, url: str) -> PoolEvents:
        """The shared listener of ``url`` (started on first use)."""
        with _clients_lock:
            found = cls._instances.get(url)
            if found is None:
                found = cls._instances[url] = cls(url)
        return found

    @classmethod
    def existing(cls, url: str) -> PoolEvents | None:
        """The listener of ``url`` if one was started (None: none yet; nothing is started)."""
        return cls._instances.get(url)

    @property
    def connected(self) -> bool:
        """True while the listener is subscribed."""
        return self._connected.is_set()

    def ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the subscription; True when subscribed."""
        return self._connected.wait(timeout)

    def token(self, pool_id: str) -> tuple[int, int] | None:
        """``(subscription, event count)`` of the pool now (pass it to :meth:`wait`); None
        while disconnected (events may be missed then)."""
        with self._cond:
            if not self.connected:
                return None
            return self._epoch, self._versions.get(pool_id, 0)

    def latest(self, pool_id: str) -> tuple[tuple[int, int], str, float] | None:
        """``(token, payload, when heard)`` of the pool's latest event if it carried the JSON
        state a worker put in it (small pools, see ``_FINISH``); else (or while disconnected)
        None. ``when heard`` is a ``time.monotonic()`` time."""
        with self._cond:
            if not self.connected:
                return None
            count = self._versions.get(pool_id, 0)
            found = self._payloads.get(pool_id)
            if found is None or found[0] != count:
                return None
            return (self._epoch, count), found[1], found[2]

    def wait(self, pool_id: str, token: tuple[int, int] | None, timeout: float) -> bool:
        """Block until an event for ``pool_id`` arrived after ``token`` (at once for a token
        of an earlier subscription, or None, or while disconnected); False on timeout."""
        with self._cond:
            return self._cond.wait_for(
                lambda: (
                    token != (self._epoch, self._versions.get(pool_id, 0)) or not self.connected
                ),
                timeout=timeout,
            )

    def _run(self) -> None:
        client = redis.Redis.from_url(
            self.url, decode_responses=True, socket_connect_timeout=5, health_check_interval=30
        )
        pattern = keys.events_channel("*")
        while True:
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.psubscribe(pattern)
                pubsub.get_message(timeout=1.0)  # the subscription confirmation
                with self._cond:
                    self._epoch += 1
                    self._payloads.clear()
                    self._connected.set()
                while True:
                    message = pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                    if message is None or message.get("type") != "pmessage":
                        continue
                    pool_id = str(message["channel"]).split(":")[2]
                    data = message.get("data")
                    with self._cond:
                        count = self._versions[pool_id] = self._versions.get(pool_id, 0) + 1
                        if isinstance(data, str) and data.startswith("{"):
                            self._payloads[pool_id] = (count, data, time.monotonic())
                            self._payloads.move_to_end(pool_id)
                            while len(self._payloads) > EVENT_PAYLOADS_KEPT:
                                self._payloads.popitem(last=False)
                        else:
                            self._payloads.pop(pool_id, None)
                        self._cond.notify_all()
            except Exception:  # noqa: BLE001 - reconnect on any failure
                self._connected.clear()
                with self._cond:
                    self._cond.notify_all()
                with contextlib.suppress(Exception):
                    pubsub.close()
                time.sleep(0.5)


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys (the stored form of arguments; hashed for the cache)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def batch_task_id(pool_id: str, batch: int) -> str:
    """The Celery task id of batch ``batch``'s first message (also ``lane item`` ``b<batch>``)."""
    return f"{pool_id}.b{batch}"


def batch_positions(batch: int, batch_size: int, n: int) -> list[int]:
    """Positions of batch ``batch``: ``[batch * batch_size, min(n, (batch + 1) * batch_size))``."""
    return list(range(batch * batch_size, min(n, (batch + 1) * batch_size)))


def parse_state(value: str) -> tuple[str, int, float | None, float | None]:
    """Parse ``"<status>|<attempt>|<started>|<finished>"``."""
    status, attempt, started, finished = value.split("|", 3)
    return (
        status,
        int(attempt),
        float(started) if started else None,
        (float(finished) if finished else None),
    )


# --------------------------------------------------------------------------- Lua

_LUA_PARSE = """
local function parse(v)
  local st, a, t0, t1 = string.match(v, '^(%a+)|(%d+)|([^|]*)|(.*)$')
  return st, tonumber(a), t0, t1
end
local function finished(st)
  return st == 'success' or st == 'error' or st == 'timeout' or st == 'cancelled'
end
-- write an entry's state and keep the per-status counts (hash CK) in step
local function setstate(ck, pos, old, new, value)
  redis.call('HSET', KEYS[1], pos, value)
  if old ~= new then
    redis.call('HINCRBY', ck, old, -1)
    redis.call('HINCRBY', ck, new, 1)
  end
end
"""

# Lanes (max_workers): a work item is a batch "b<k>" (positions k*bs .. (k+1)*bs-1) or a retry
# item "r<tag>.<k>" whose positions are a JSON list in the ``items`` hash. K holds key names.
_LUA_LANES = """
local function item_positions(K, item, n, bs)
  if string.sub(item, 1, 1) == 'b' then
    local b = tonumber(string.sub(item, 2))
    local out = {}
    for p = b * bs, math.min(n, (b + 1) * bs) - 1 do out[#out + 1] = p end
    return out
  end
  local js = redis.call('HGET', K.items, item)
  if not js then return {} end
  return cjson.decode(js)
end
local function pending_of(K, positions)
  local res = {}
  for _, p in ipairs(positions) do
    local v = redis.call('HGET', K.state, tostring(p))
    if v then
      local st, ca = parse(v)
      if st == 'pending' then
        res[#res + 1] = p
        res[#res + 1] = ca
      end
    end
  end
  return res
end
-- give lane J the next backlog item that still has pending entries: {item, pos, att, ...}
local function next_item(K, j, prev, n, bs, prefix)
  while true do
    local item = redis.call('LPOP', K.backlog)
    if not item then
      redis.call('HSET', K.lanes, j, 'end')
      return nil
    end
    local pend = pending_of(K, item_positions(K, item, n, bs))
    if #pend > 0 then
      redis.call('HSET', K.lanes, j, item, j .. ':prev', prev)
      local res = {item}
      for k = 1, #pend, 2 do
        redis.call('HSET', K.tasks, tostring(pend[k]), prefix .. '.' .. item)
        res[#res + 1] = pend[k]
        res[#res + 1] = pend[k + 1]
      end
      return res
    end
  end
end
"""

# KEYS: state cancelled args begun hosts deliveries version outcome logs tasks counts meta tomb
# ARGV: task_id redelivered host now max_deliveries channel cache_digest cache_max_age
#       cache_prefix want_meta, then (pos, attempt) pairs
# want_meta '1': read the cache settings from meta (not ARGV) and return the meta hash too.
# Returns 'unborn' (no record and no tombstone: not written yet), 'gone', 'dup', or {meta JSON
# object ('' unless want_meta), (pos, decision, args, ck)...} (one JSON string parses much
# faster in the client than a reply of 2 elements per field).
_START = (
    _LUA_PARSE
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then
  if redis.call('EXISTS', KEYS[13]) == 0 then return 'unborn' end
  return 'gone'
end
if redis.call('SADD', KEYS[4], ARGV[1]) == 0 and ARGV[2] ~= '1' then return 'dup' end
local now = ARGV[4]
local maxd = tonumber(ARGV[5])
local digest = ARGV[7]
local maxage = tonumber(ARGV[8])
local out = {''}
if ARGV[10] == '1' then
  local m = redis.call('HGETALL', KEYS[12])
  local f = {}
  for i = 1, #m, 2 do f[m[i]] = m[i + 1] end
  digest = (f['cache'] == '1' and f['cache_digest']) or ''
  maxage = tonumber(f['cache_max_age'] or '0') or 0
  out = {cjson.encode(f)}
end
local changed, finals = false, false
for i = 11, #ARGV, 2 do
  local pos = ARGV[i]
  local att = tonumber(ARGV[i + 1])
  local cur = redis.call('HGET', KEYS[1], pos)
  local decision, a, ck = 'run', '', ''
  if not cur then
    decision = 'gone'
  else
    local st, ca = parse(cur)
    if redis.call('SISMEMBER', KEYS[2], pos) == 1 then
      decision = 'cancelled'
      if st == 'pending' then
        setstate(KEYS[11], pos, st, 'cancelled', 'cancelled|' .. ca .. '||')
        finals = true
      end
    elseif att < ca then
      decision = 'superseded'
    elseif att == ca and finished(st) then
      decision = 'done'
    else
      local d = redis.call('HINCRBY', KEYS[6], pos .. ':' .. att, 1)
      if d > maxd then
        decision = 'lost'
      else
        a = redis.call('LINDEX', KEYS[3], tonumber(pos)) or ''
        if digest ~= '' then
          ck = ARGV[9] .. redis.sha1hex(digest .. '\\n' .. a)
          local hit = redis.call('HMGET', ck, 'o', 'l', 't')
          if hit[1] and hit[3] and (tonumber(now) - tonumber(hit[3])) <= maxage then
            decision = 'cached'
            setstate(KEYS[11], pos, st, 'success', 'success|' .. att .. '|' .. now .. '|' .. now)
            finals = true
            redis.call('HSET', KEYS[8], pos, hit[1])
            redis.call('HSET', KEYS[9], pos, hit[2] or '')
            redis.call('HSET', KEYS[5], pos, 'cache')
            redis.call('HSET', KEYS[10], pos, ARGV[1])
            a = ''
          end
        end
        if decision == 'run' then
          setstate(KEYS[11], pos, st, 'running', 'running|' .. att .. '|' .. now .. '|')
          redis.call('HSET', KEYS[5], pos, ARGV[3])
          redis.call('HSET', KEYS[10], pos, ARGV[1])
        end
      end
      changed = true
    end
  end
  out[#out + 1] = pos
  out[#out + 1] = decision
  out[#out + 1] = a
  out[#out + 1] = ck
end
-- entries that start only bump the version; waiters are woken for finished entries
if changed or finals then
  local v = redis.call('INCR', KEYS[7])
  if finals then redis.call('PUBLISH', ARGV[6], v) end
end
return out
"""
)

# KEYS: state outcome logs history version lanes tasks counts backlog items
# ARGV: now channel n batch_size (unused) lane_j lane_item redelivered chain cache_ttl
#       retry_task_id pool_id payload_max, then groups of 9:
#       pos attempt status json logs started finished mode(final|retry) cachekey
# payload_max > 0 (small pools): the event carries the record's new state as JSON
# {v, c, s, o, l} (version, counts, state, outcome, logs) when that fits in payload_max bytes.
_FINISH = (
    _LUA_PARSE
    + _LUA_LANES
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-2} end
local now = ARGV[1]
local ttl = tonumber(ARGV[10])
local G = 9
for i = 14, #ARGV, G do
  local pos, att, status = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local js, logs, t0, t1 = ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
  local mode, ck = ARGV[i + 7], ARGV[i + 8]
  local cur = redis.call('HGET', KEYS[1], pos)
  if cur then
    local st, ca = parse(cur)
    if ca == att and (st == 'running' or st == 'pending') then
      if mode == 'retry' then
        setstate(KEYS[8], pos, st, 'pending', 'pending|' .. (att + 1) .. '||')
        redis.call('HSET', KEYS[4], pos .. ':' .. att, js)
        redis.call('HSET', KEYS[7], pos, ARGV[11])
      else
        setstate(KEYS[8], pos, st, status, status .. '|' .. att .. '|' .. t0 .. '|' .. t1)
        redis.call('HSET', KEYS[2], pos, js)
        redis.call('HSET', KEYS[3], pos, logs)
        if ck ~= '' and status == 'success' and ttl > 0 then
          redis.call('HSET', ck, 'o', js, 'l', logs, 't', now)
          redis.call('EXPIRE', ck, ttl)
        end
      end
    else
      redis.call('HSET', KEYS[4], pos .. ':' .. att, js)
    end
  end
end
local v = redis.call('INCR', KEYS[5])
local event = v
local pmax = tonumber(ARGV[13])
if pmax > 0 then
  local size = 0
  local function hash(key)
    local flat, t = redis.call('HGETALL', key), {}
    for i = 1, #flat, 2 do
      t[flat[i]] = flat[i + 1]
      size = size + #flat[i] + #flat[i + 1]
    end
    return t
  end
  local payload = {v = v, c = hash(KEYS[8]), s = hash(KEYS[1]), o = hash(KEYS[2]),
                   l = hash(KEYS[3])}
  if size <= pmax then
    local body = cjson.encode(payload)
    if #body <= pmax then event = body end
  end
end
redis.call('PUBLISH', ARGV[2], event)
if ARGV[6] == '' or ARGV[9] ~= '1' then return {-1} end
local K = {state = KEYS[1], lanes = KEYS[6], tasks = KEYS[7], backlog = KEYS[9], items = KEYS[10]}
local n, bs = tonumber(ARGV[3]), tonumber(ARGV[4])
local j, mine = ARGV[6], ARGV[7]
local cur = redis.call('HGET', K.lanes, j)
if cur == mine then
  return next_item(K, j, mine, n, bs, ARGV[12]) or {-1}
end
if ARGV[8] == '1' and cur and cur ~= 'end'
    and redis.call('HGET', K.lanes, j .. ':prev') == mine then
  -- redelivered after it chained: publish the same successor again (duplicates are dropped)
  local pend = pending_of(K, item_positions(K, cur, n, bs))
  if #pend == 0 then return {-1} end
  local res = {cur}
  for _, v in ipairs(pend) do res[#res + 1] = v end
  return res
end
return {-1}
"""
)

# KEYS: state cancelled version tasks counts ; ARGV: channel
_CANCEL = (
    _LUA_PARSE
    + """
local all = redis.call('HGETALL', KEYS[1])
local n, running = 0, 0
local ids, seen = {}, {}
for i = 1, #all, 2 do
  local pos, v = all[i], all[i + 1]
  local st, a = parse(v)
  if st == 'pending' then
    redis.call('SADD', KEYS[2], pos)
    setstate(KEYS[5], pos, st, 'cancelled', 'cancelled|' .. a .. '||')
    n = n + 1
    local t = redis.call('HGET', KEYS[4], pos)
    if t and not seen[t] then
      seen[t] = true
      ids[#ids + 1] = t
    end
  elseif st == 'running' then
    running = running + 1
  end
end
if n > 0 then redis.call('PUBLISH', ARGV[1], redis.call('INCR', KEYS[3])) end
local out = {n, running}
for _, t in ipairs(ids) do out[#out + 1] = t end
return out
"""
)

# KEYS: state cancelled tasks version meta counts ; ARGV: now channel, then (pos, attempt, task_id)
_RETRY = (
    _LUA_PARSE
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local n = 0
for i = 3, #ARGV, 3 do
  local pos, att, tid = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local cur = redis.call('HGET', KEYS[1], pos)
  if cur then
    local st, ca = parse(cur)
    if ca < att then
      redis.call('SREM', KEYS[2], pos)
      setstate(KEYS[6], pos, st, 'pending', 'pending|' .. att .. '||')
      redis.call('HSET', KEYS[3], pos, tid)
      n = n + 1
    end
  end
end
redis.call('HSET', KEYS[5], 'retried', ARGV[1])
redis.call('PUBLISH', ARGV[2], redis.call('INCR', KEYS[4]))
return n
"""
)


# KEYS: state cancelled tasks version meta counts lanes backlog items
# ARGV: now channel n batch_size nlanes pool_id tag, then (pos, attempt) pairs
# Moves entries to their new attempt, queues them as retry items behind the lanes' backlog, and
# hands items to idle lanes at once; returns {moved, json([lane, item, pos, att, ...]) ...}.
_RETRY_LANES = (
    _LUA_PARSE
    + _LUA_LANES
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end
local K = {state = KEYS[1], lanes = KEYS[7], tasks = KEYS[3], backlog = KEYS[8], items = KEYS[9]}
local n, bs, nl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local moved = {}
for i = 8, #ARGV, 2 do
  local pos, att = ARGV[i], tonumber(ARGV[i + 1])
  local cur = redis.call('HGET', KEYS[1], pos)
  if cur then
    local st, ca = parse(cur)
    if ca < att then
      redis.call('SREM', KEYS[2], pos)
      setstate(KEYS[6], pos, st, 'pending', 'pending|' .. att .. '||')
      redis.call('HDEL', KEYS[3], pos)
      moved[#moved + 1] = tonumber(pos)
    end
  end
end
redis.call('HSET', KEYS[5], 'retried', ARGV[1])
redis.call('PUBLISH', ARGV[2], redis.call('INCR', KEYS[4]))
local k = 0
for i = 1, #moved, bs do
  local chunk = {}
  for t = i, math.min(i + bs - 1, #moved) do chunk[#chunk + 1] = moved[t] end
  local id = 'r' .. ARGV[7] .. '.' .. k
  k = k + 1
  redis.call('HSET', K.items, id, cjson.encode(chunk))
  redis.call('RPUSH', K.backlog, id)
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', K.backlog, ttl) end
local out = {#moved}
for j = 0, nl - 1 do
  local cur = redis.call('HGET', K.lanes, tostring(j))
  if not cur or cur == 'end' then
    local res = next_item(K, tostring(j), '', n, bs, ARGV[6])
    if not res then break end
    table.insert(res, 1, j)
    out[#out + 1] = cjson.encode(res)
  end
end
return out
"""
)


#: Pools of at most this many entries are created by one Lua script with their arguments inline;
#: larger ones write their bulk with native commands (see :meth:`PoolRecord.create`).
CREATE_INLINE_MAX = 1000

#: The record's keys as ``_CREATE`` takes them (every part of :data:`keys.PARTS`, in this order).
CREATE_KEYS = (
    "meta", "args", "state", "outcome", "logs", "hosts", "tasks", "history", "deliveries",
    "cancelled", "begun", "lanes", "backlog", "items", "counts", "version",
)  # fmt: skip

# KEYS: CREATE_KEYS (each given the TTL), then the tombstone and the pools index
# ARGV: ttl tombstone_ttl created trim_before n batch_size lanes pool_id placeholder meta
#       statuses inline, then (inline) the n encoded arguments. meta: JSON object of the meta
#       fields (string values); statuses: space-separated, each counted 0 but "pending" (n).
# inline '1': also write the bulk of the record (args, state, the first messages' task ids
# <pool_id>.b<k>, backlog); '0': the same MULTI wrote them first (see PoolRecord.create). A
# capped pool's lane j starts with b<j>.
_CREATE = """
local ttl, tomb_ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local n, bs, nl = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local pool, ph = ARGV[8], ARGV[9]
-- one command per 4,000 values at most (Lua's unpack has a limit)
local function put(cmd, key, list)
  for i = 1, #list, 4000 do
    redis.call(cmd, key, unpack(list, i, math.min(#list, i + 3999)))
  end
end
local meta, counts = {}, {}
for field, value in pairs(cjson.decode(ARGV[10])) do
  meta[#meta + 1] = field
  meta[#meta + 1] = value
end
put('HSET', KEYS[1], meta)
for status in string.gmatch(ARGV[11], '%S+') do
  counts[#counts + 1] = status
  counts[#counts + 1] = (status == 'pending') and n or 0
end
put('HSET', KEYS[15], counts)
local nb = math.ceil(n / bs)
if ARGV[12] == '1' then
  local args, state, tasks, backlog = {}, {}, {}, {}
  for p = 0, n - 1 do
    args[#args + 1] = ARGV[13 + p]
    state[#state + 1] = tostring(p)
    state[#state + 1] = 'pending|1||'
  end
  put('RPUSH', KEYS[2], args)
  put('HSET', KEYS[3], state)
  local first = nb
  if nl > 0 then first = math.min(nl, nb) end
  for b = 0, first - 1 do
    for p = b * bs, math.min(n, (b + 1) * bs) - 1 do
      tasks[#tasks + 1] = tostring(p)
      tasks[#tasks + 1] = pool .. '.b' .. b
    end
  end
  put('HSET', KEYS[7], tasks)
  if nl > 0 then
    for b = nl, nb - 1 do backlog[#backlog + 1] = 'b' .. b end
    put('RPUSH', KEYS[13], backlog)
  end
end
for _, i in ipairs({4, 5, 6, 8, 9, 12, 14}) do redis.call('HSET', KEYS[i], ph, '') end
for _, i in ipairs({10, 11}) do redis.call('SADD', KEYS[i], ph) end
if nl > 0 then
  local lanes = {}
  for j = 0, nl - 1 do
    lanes[#lanes + 1] = tostring(j)
    lanes[#lanes + 1] = 'b' .. j
  end
  put('HSET', KEYS[12], lanes)
end
redis.call('SET', KEYS[16], 0)
for i = 1, #KEYS - 2 do redis.call('EXPIRE', KEYS[i], ttl) end
redis.call('SET', KEYS[#KEYS - 1], ARGV[3], 'EX', tomb_ttl)
redis.call('ZADD', KEYS[#KEYS], ARGV[3], pool)
redis.call('ZREMRANGEBYSCORE', KEYS[#KEYS], '-inf', ARGV[4])
return 1
"""


class _Scripts:
    def __init__(self, client: redis.Redis) -> None:
        self.create = client.register_script(_CREATE)
        self.start = client.register_script(_START)
        self.finish = client.register_script(_FINISH)
        self.cancel = client.register_script(_CANCEL)
        self.retry = client.register_script(_RETRY)
        self.retry_lanes = client.register_script(_RETRY_LANES)


_scripts: dict[int, _Scripts] = {}


def _scripts_for(client: redis.Redis) -> _Scripts:
    found = _scripts.get(id(client))
    if found is None:
        found = _scripts[id(client)] = _Scripts(client)
    return found


# --------------------------------------------------------------------------- the record


class PoolRecord:
    """The Redis record of one pool.

    pool_id: the pool's id. url: Redis URL of the record (the result backend).
    """

    def __init__(self, pool_id: str, url: str) -> None:
        self.pool_id = pool_id
        self.url = url
        self.client = redis_client(url)
        self.keys = keys.pool_keys(pool_id)
        self.channel = keys.events_channel(pool_id)
        self._scripts = _scripts_for(self.client)

    # ------------------------------------------------------------------ client: create / read

    def create(
        self, *, meta: dict[str, Any], encoded_args: Sequence[str], batch_size: int, lanes: int
    ) -> None:
        """Write the whole record atomically, every key with its TTL, and index the pool.

        meta: fields of ``meta``. encoded_args: canonical JSON per position. batch_size:
        entries per message. lanes: number of ``max_workers`` lanes (0: uncapped). The first
        messages (one per lane, or every batch) are recorded as task ids ``<pool_id>.b<k>``
        (:func:`batch_task_id`); lane ``j`` starts with batch ``b<j>`` and the later batches
        form the backlog, in order.

        A pool of at most :data:`CREATE_INLINE_MAX` entries is one Lua script (one round trip:
        what a single call pays); a larger one is a MULTI of chunked native writes for its bulk
        (faster in Redis than a loop in Lua, which would block the server longer) followed by
        the same script for the rest.
        """
        k = self.keys
        ttl = keys.record_ttl()
        n, bs = len(encoded_args), max(1, batch_size)
        inline = n <= CREATE_INLINE_MAX
        args: list[Any] = [
            ttl, keys.tombstone_ttl(), repr(float(meta.get("created", time.time()))),
            repr(time.time() - ttl), n, bs, lanes, self.pool_id, keys.PLACEHOLDER,
            json.dumps({f: str(v) for f, v in meta.items()}, ensure_ascii=False),
            " ".join(STATUSES), "1" if inline else "0",
        ]  # fmt: skip
        script_keys = [
            *(k[part] for part in CREATE_KEYS),
            keys.tombstone_key(self.pool_id),
            keys.POOLS_INDEX,
        ]
        if inline:
            self._scripts.create(keys=script_keys, args=[*args, *encoded_args])
            return
        pipe = self.client.pipeline(transaction=True)  # pool ids are fresh: nothing to delete
        chunk = 2000
        for start in range(0, n, chunk):
            pipe.rpush(k["args"], *encoded_args[start : start + chunk])
            pipe.hset(
                k["state"],
                mapping={str(p): "pending|1||" for p in range(start, min(n, start + chunk))},
            )
        n_batches = math.ceil(n / bs)
        tasks = [
            (str(p), batch_task_id(self.pool_id, b))
            for b in range(min(lanes, n_batches) if lanes else n_batches)
            for p in range(b * bs, min(n, (b + 1) * bs))
        ]
        for start in range(0, len(tasks), chunk):
            pipe.hset(k["tasks"], mapping=dict(tasks[start : start + chunk]))
        backlog = [f"b{b}" for b in range(lanes, n_batches)] if lanes else []
        for start in range(0, len(backlog), chunk):  # (an empty list is no key: see retry)
            pipe.rpush(k["backlog"], *backlog[start : start + chunk])
        self._scripts.create(keys=script_keys, args=args, client=pipe)
        pipe.execute()

    def delete(self) -> None:
        """Remove the record (used when publishing failed: nothing half-submitted remains)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(*self.keys.values(), keys.tombstone_key(self.pool_id))
        pipe.zrem(keys.POOLS_INDEX, self.pool_id)
        pipe.execute()

    def not_found(self) -> PoolNotFoundError:
        """The error for a record that does not exist: expired (tombstone) or unknown."""
        from fused_celery.errors import PoolExpiredError

        created = self.client.get(keys.tombstone_key(self.pool_id))
        if created is not None:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(created)))
            return PoolExpiredError(
                f"pool {self.pool_id!r} (created {when}) has expired: its states, results and "
                f"logs are kept for result_expires={keys.record_ttl()} s "
                "(FUSED_CELERY_RESULT_EXPIRES); submit it again"
            )
        return PoolNotFoundError(
            f"no pool with id {self.pool_id!r} in Redis at {mask_url(self.url)}: it was never "
            "submitted there, or it expired long ago; check the id and FUSED_CELERY_BROKER_URL"
        )

    def load(self) -> tuple[dict[str, str], list[str]]:
        """``(meta, encoded args JSON per position)``; raises ``PoolNotFoundError`` if absent."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.keys["meta"])
        pipe.lrange(self.keys["args"], 0, -1)
        meta, args = pipe.execute()
        if not meta:
            raise self.not_found()
        return meta, args

    def read_states(self) -> tuple[int | None, dict[str, str]]:
        """``(version, {position: state string})`` in one round trip (version None: gone)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.keys["version"])
        pipe.hgetall(self.keys["state"])
        version, states = pipe.execute()
        return (int(version) if version is not None else None), states

    def counts(self) -> dict[str, int] | None:
        """Entries per status, kept by the Lua scripts (None when the record is gone)."""
        raw = self.client.hgetall(self.keys["counts"])
        if not raw:
            return None
        return {status: int(count) for status, count in raw.items()}

    def version(self) -> int | None:
        """The change counter (None when the record is gone)."""
        value = self.client.get(self.keys["version"])
        return int(value) if value is not None else None

    def read_outcomes(
        self, positions: Sequence[int]
    ) -> tuple[list[str | None], list[str | None], list[str | None]]:
        """``(states, outcome JSON, logs)`` of ``positions``, in one round trip."""
        fields = [str(p) for p in positions]
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(self.keys["state"], fields)
        pipe.hmget(self.keys["outcome"], fields)
        pipe.hmget(self.keys["logs"], fields)
        states, outcomes, logs = pipe.execute()
        return states, outcomes, logs

    def hosts(self) -> dict[int, str]:
        """Worker hostname per position (entries that started)."""
        raw = self.client.hgetall(self.keys["hosts"])
        return {int(p): h for p, h in raw.items() if p != keys.PLACEHOLDER}

    def task_ids(self) -> dict[int, str]:
        """Celery task id of each position's latest attempt."""
        raw = self.client.hgetall(self.keys["tasks"])
        return {int(p): t for p, t in raw.items() if p != keys.PLACEHOLDER and t}

    def history(self) -> dict[str, dict[str, Any]]:
        """Retried or superseded attempts, ``"<pos>:<attempt>" -> record``."""
        raw = self.client.hgetall(self.keys["history"])
        return {f: json.loads(v) for f, v in raw.items() if f != keys.PLACEHOLDER and v}

    # ------------------------------------------------------------------ client: transitions

    def cancel(self) -> tuple[int, int, list[str]]:
        """Cancel every pending entry: ``(cancelled, running, task ids to revoke)``."""
        k = self.keys
        out = self._scripts.cancel(
            keys=[k["state"], k["cancelled"], k["version"], k["tasks"], k["counts"]],
            args=[self.channel],
        )
        return int(out[0]), int(out[1]), [str(t) for t in out[2:]]

    def retry_lanes(
        self, entries: Iterable[tuple[int, int]], *, meta: dict[str, str]
    ) -> tuple[int, list[tuple[int, str, list[tuple[int, int]]]]]:
        """Retry entries of a capped pool through its lanes: ``entries`` of ``(position, new
        attempt)`` become retry items at the end of the backlog; idle lanes take items at once.

        Returns ``(moved, [(lane, item, [(pos, attempt)])])``: the items to publish now.
        """
        k = self.keys
        args: list[Any] = [
            time.time(), self.channel, meta.get("n", "0"), meta.get("batch_size", "1"),
            meta.get("lanes", "0"), self.pool_id, uuid.uuid4().hex[:8],
        ]  # fmt: skip
        for pos, attempt in entries:
            args += [pos, attempt]
        out = self._scripts.retry_lanes(
            keys=[
                k["state"], k["cancelled"], k["tasks"], k["version"], k["meta"], k["counts"],
                k["lanes"], k["backlog"], k["items"],
            ],
            args=args,
        )  # fmt: skip
        if int(out[0]) < 0:
            raise self.not_found()
        self._renew()
        assigned = []
        for raw in out[1:]:
            lane, item, *rest = json.loads(raw)
            pairs = [(int(rest[i]), int(rest[i + 1])) for i in range(0, len(rest), 2)]
            assigned.append((int(lane), str(item), pairs))
        return int(out[0]), assigned

    def _renew(self) -> None:
        ttl = keys.record_ttl()
        pipe = self.client.pipeline(transaction=False)
        for key in self.keys.values():
            pipe.expire(key, ttl)
        pipe.expire(keys.tombstone_key(self.pool_id), keys.tombstone_ttl())
        pipe.execute()

    def lanes(self) -> dict[str, str]:
        """The lanes hash: lane -> item in flight (``end``), ``"<lane>:prev"`` -> its dispatcher."""
        raw = self.client.hgetall(self.keys["lanes"])
        return {f: v for f, v in raw.items() if f != keys.PLACEHOLDER}

    def retry(self, items: Iterable[tuple[int, int, str]]) -> int:
        """Move entries to a new attempt: ``items`` of ``(position, new attempt, task id)``.

        Only entries whose current attempt is older move (concurrent retries are harmless).
        Renews the TTL of the whole record. Returns how many moved; raises if the record is gone.
        """
        k = self.keys
        args: list[Any] = [time.time(), self.channel]
        for pos, attempt, task_id in items:
            args += [pos, attempt, task_id]
        moved = self._scripts.retry(
            keys=[k["state"], k["cancelled"], k["tasks"], k["version"], k["meta"], k["counts"]],
            args=args,
        )
        if int(moved) < 0:
            raise self.not_found()
        self._renew()
        return int(moved)

    # ------------------------------------------------------------------ worker

    def meta(self) -> dict[str, str]:
        """The ``meta`` hash (empty when the record is gone)."""
        return self.client.hgetall(self.keys["meta"])

    def start(
        self,
        *,
        task_id: str,
        redelivered: bool,
        host: str,
        entries: Sequence[tuple[int, int]],
        cache_digest: str = "",
        cache_max_age: float = 0,
        fetch_meta: bool = False,
    ) -> tuple[list[tuple[int, str, str, str]], dict[str, str] | None] | str:
        """Begin a message: ``([(position, decision, args JSON, cache key)], meta)``, or
        ``"gone"`` / ``"dup"`` for the whole message, or ``"unborn"`` when the record (and its
        tombstone) does not exist yet (submit publishes a small pool's messages first).

        entries: ``(position, attempt)`` pairs. cache_digest: the UDF's cache digest, or ""
        when caching is off. fetch_meta: read the cache settings from the record's ``meta``
        instead and return that hash (``meta`` is None otherwise), so a worker that has not
        seen the pool yet needs no extra round trip. Decisions: run, cached, cancelled,
        superseded, done, lost, gone.
        """
        k = self.keys
        args: list[Any] = [
            task_id,
            "1" if redelivered else "0",
            host,
            repr(time.time()),
            MAX_DELIVERIES,
            self.channel,
            cache_digest,
            cache_max_age,
            keys.CACHE_PREFIX,
            "1" if fetch_meta else "0",
        ]
        for pos, attempt in entries:
            args += [pos, attempt]
        out = self._scripts.start(
            keys=[
                k["state"], k["cancelled"], k["args"], k["begun"], k["hosts"], k["deliveries"],
                k["version"], k["outcome"], k["logs"], k["tasks"], k["counts"], k["meta"],
                keys.tombstone_key(self.pool_id),
            ],
            args=args,
        )  # fmt: skip
        if isinstance(out, str):
            return out
        meta = json.loads(out[0]) if fetch_meta else None
        return [
            (int(out[i]), str(out[i + 1]), str(out[i + 2]), str(out[i + 3]))
            for i in range(1, len(out), 4)
        ], meta

    def finish(
        self,
        *,
        results: Sequence[dict[str, Any]],
        meta: dict[str, str],
        lane: Sequence[Any] | None,
        redelivered: bool,
        chain: bool,
        retry_task_id: str = "",
    ) -> tuple[str, list[tuple[int, int]]] | None:
        """Record outcomes; return the lane's next item ``(item, [(pos, attempt)])`` or None.

        results: dicts with ``pos, attempt, status, json, logs, started, finished, mode``
        (``final`` or ``retry``) and ``cache_key``. lane: ``[lane, item]`` of a capped pool's
        message. chain: take the lane's next item (False while a retry of this item is
        pending, or for a partial write). Returns None also when the record is gone.
        """
        k = self.keys
        cache_ttl = int(float(meta.get("cache_max_age") or 0)) if meta.get("cache") == "1" else 0
        args: list[Any] = [
            repr(time.time()),
            self.channel,
            meta.get("n", "0"),
            meta.get("batch_size", "1"),
            meta.get("lanes", "0"),
            str(lane[0]) if lane else "",
            str(lane[1]) if lane else "",
            "1" if redelivered else "0",
            "1" if chain else "0",
            cache_ttl,
            retry_task_id,
            self.pool_id,
            EVENT_PAYLOAD_MAX_BYTES if int(meta.get("n") or 0) <= SMALL_POOL_ENTRIES else 0,
        ]
        for r in results:
            args += [
                r["pos"],
                r["attempt"],
                r["status"],
                r["json"],
                r.get("logs", ""),
                repr(r["started"]) if r.get("started") is not None else "",
                repr(r["finished"]) if r.get("finished") is not None else "",
                r.get("mode", "final"),
                r.get("cache_key", ""),
            ]
        out = self._scripts.finish(
            keys=[
                k["state"], k["outcome"], k["logs"], k["history"], k["version"], k["lanes"],
                k["tasks"], k["counts"], k["backlog"], k["items"],
            ],
            args=args,
        )  # fmt: skip
        if isinstance(out[0], int):
            return None
        rest = out[1:]
        return str(out[0]), [(int(rest[i]), int(rest[i + 1])) for i in range(0, len(rest), 2)]


# --------------------------------------------------------------------------- lost messages

#: kombu's Redis transport: the hash of delivered-but-unacknowledged messages, and the suffixes
#: of a queue's priority lists (``queue``, ``queue\x06\x163``, ...; PRIORITY_STEPS 0, 3, 6, 9).
KOMBU_UNACKED = "unacked"
KOMBU_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")

#: A queue longer than this is not scanned for lost messages (too costly to do in passing).
LOST_SCAN_MAX_QUEUE = 200_000


def _message_id(raw: str) -> str | None:
    try:
        message = json.loads(raw)
    except ValueError:
        return None
    if isinstance(message, list):  # unacked entries are [message, exchange, routing_key]
        message = message[0] if message else {}
    headers = message.get("headers") if isinstance(message, dict) else None
    return headers.get("id") if isinstance(headers, dict) else None


def find_lost(
    record: PoolRecord, broker: redis.Redis, queue: str
) -> dict[str, list[tuple[int, int]]] | None:
    """Pending entries whose message is nowhere: ``{task id: [(position, attempt)]}``.

    A message can be lost when Redis goes away at the wrong moment (kombu pops a message with
    BRPOP and records it as unacknowledged in a second command; if the connection drops in
    between, neither Redis nor the worker keeps it). An entry is lost when it is ``pending``
    with a recorded task id that is neither in ``queue``'s lists nor in kombu's unacknowledged
    hash, and still pending afterwards. Reads the queue before the unacknowledged hash, the
    order in which messages move, so a message in transit is not taken for lost. Returns None
    when the queue is too long to scan (:data:`LOST_SCAN_MAX_QUEUE`).
    """
    k = record.keys
    pipe = record.client.pipeline(transaction=False)
    pipe.hgetall(k["state"])
    pipe.hgetall(k["tasks"])
    states, tasks = pipe.execute()
    candidates: dict[str, list[int]] = {}
    for field, value in states.items():
        if value.startswith("pending|") and tasks.get(field):
            candidates.setdefault(tasks[field], []).append(int(field))
    if not candidates:
        return {}
    names = [queue + suffix for suffix in KOMBU_PRIORITY_SUFFIXES]
    lengths = [broker.llen(name) for name in names]
    if sum(lengths) > LOST_SCAN_MAX_QUEUE:
        return None
    missing = set(candidates)
    for name, length in zip(names, lengths):
        for start in range(0, length, 1000):
            for raw in broker.lrange(name, start, start + 999):
                missing.discard(_message_id(raw) or "")
            if not missing:
                return {}
    for raw in broker.hvals(KOMBU_UNACKED):
        missing.discard(_message_id(raw) or "")
    if not missing:
        return {}
    positions = [p for t in missing for p in candidates[t]]
    pipe = record.client.pipeline(transaction=False)
    pipe.hmget(k["state"], [str(p) for p in positions])
    pipe.hmget(k["tasks"], [str(p) for p in positions])
    now_states, now_tasks = pipe.execute()
    lost: dict[str, list[tuple[int, int]]] = {}
    for pos, state, task_id in zip(positions, now_states, now_tasks):
        if state and state.startswith("pending|") and task_id in missing:
            lost.setdefault(task_id, []).append((pos, parse_state(state)[1]))
    return lost


def load_value(outcome: dict[str, Any]) -> dict[str, Any] | None:
    """The codec envelope of a stored outcome, fetched from storage when it is a reference."""
    if outcome.get("ref"):
        from fused_celery import blobs

        return blobs.load_envelope(outcome["ref"])
    return outcome.get("value")
