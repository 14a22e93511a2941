-- Helpers of the scripts that read and write entry states: P:state values are
-- "<status>|<attempt>|<started>|<finished>". Uses K.state and K.counts.

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
