-- Lanes (max_workers): a work item is a batch "b<k>" (positions k*bs .. (k+1)*bs-1) or a retry
-- item "r<tag>.<k>" whose positions are a JSON list in the items hash. Uses K.state, K.items,
-- K.backlog, K.lanes, K.tasks and the helpers of _pool_entry.lua.

local function item_positions(item, n, bs)
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

local function pending_of(positions)
  local res = {}
  for _, p in ipairs(positions) do
    local v = redis.call('HGET', K.state, tostring(p))
    if v then
      local st, ca = parse(v)
      if st == ENTRY.pending then
        res[#res + 1] = p
        res[#res + 1] = ca
      end
    end
  end
  return res
end

-- give lane J the next backlog item that still has pending entries: {item, pos, att, ...}
local function next_item(j, prev, n, bs, prefix)
  while true do
    local item = redis.call('LPOP', K.backlog)
    if not item then
      redis.call('HSET', K.lanes, j, 'end')
      return nil
    end
    local pend = pending_of(item_positions(item, n, bs))
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
