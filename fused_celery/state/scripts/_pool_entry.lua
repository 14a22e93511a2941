-- Helpers of the scripts that read and write entry states: P:state values are
-- "<status>|<attempt>|<started>|<finished>". Uses K.state and K.counts, and _hmget.lua.

local function parse(v)
  local st, a, t0, t1 = string.match(v, '^(%a+)|(%d+)|([^|]*)|(.*)$')
  return st, tonumber(a), t0, t1
end

-- write an entry's state and keep the per-status counts (K.counts) in step
local function setstate(pos, old, new, value)
  redis.call('HSET', K.state, pos, value)
  if old ~= new then
    redis.call('HINCRBY', K.counts, old, -1)
    redis.call('HINCRBY', K.counts, new, 1)
  end
end

-- Writes gathered while a script loops over its entries and made once at its end by
-- stage_flush(): one variadic HSET per hash and one HINCRBY per status whose count changed,
-- instead of several calls per entry (a 100-entry message made ~550 per script). state_of(pos)
-- reads an entry's state through the gathered writes, then the states prefetch_states read.
local STAGE_CHUNK = 1000  -- values per HSET (even: field, value pairs; under unpack's limit)
local staged_keys, staged_pairs, staged_counts, staged_state = {}, {}, {}, {}

local function stage_hset(key, field, value)
  local t = staged_pairs[key]
  if not t then
    t = {}
    staged_pairs[key] = t
    staged_keys[#staged_keys + 1] = key
  end
  t[#t + 1] = field
  t[#t + 1] = value
end

-- states read ahead by prefetch_states (false: no such entry)
local fetched_state = {}

local function state_of(pos)
  local v = staged_state[pos]
  if v then return v end
  v = fetched_state[pos]
  if v ~= nil then return v end
  return redis.call('HGET', K.state, pos)
end

-- Read the states of `positions` at once (a script about to look at each of them), instead of
-- one HGET each in state_of.
local function prefetch_states(positions)
  local got = hmget_chunked(K.state, positions)
  for i = 1, #positions do fetched_state[positions[i]] = got[i] end
end

-- setstate, gathered
local function stage_state(pos, old, new, value)
  stage_hset(K.state, pos, value)
  staged_state[pos] = value
  if old ~= new then
    staged_counts[old] = (staged_counts[old] or 0) - 1
    staged_counts[new] = (staged_counts[new] or 0) + 1
  end
end

local function stage_flush()
  for _, key in ipairs(staged_keys) do
    local t = staged_pairs[key]
    for i = 1, #t, STAGE_CHUNK do
      redis.call('HSET', key, unpack(t, i, math.min(i + STAGE_CHUNK - 1, #t)))
    end
  end
  for _, st in ipairs(ENTRY_STATUSES) do
    local d = staged_counts[st]
    if d and d ~= 0 then redis.call('HINCRBY', K.counts, st, d) end
  end
  staged_keys, staged_pairs, staged_counts, staged_state = {}, {}, {}, {}
  fetched_state = {}
end

-- What ends an event of the pool's channel: ':done' when no entry is pending or running any
-- more (a client that sleeps between its reads wakes for it at once), else ''.
local function done_suffix()
  local left = redis.call('HMGET', K.counts, ENTRY.pending, ENTRY.running)
  if tonumber(left[1]) == 0 and tonumber(left[2]) == 0 then return ':done' end
  return ''
end
