-- The autoscaler's view of its queues, in one call (read only). For each queue of the tail:
-- ready = LLEN of its lists (one per priority suffix, A.suffixes is a JSON list),
-- in_flight = entries of kombu's unacked hash (K.unacked: JSON [message, exchange, routing key])
-- routed to it, and, over the pools created since A.since (K.pools) that still have pending or
-- running entries: pending, running and pool_slots (per pool ceil(remaining / batch_size), at
-- most its lanes). Reads pool keys it derives from their ids (A.pool_prefix): fine on a
-- non-cluster Redis, which is what fused-celery supports. Returns a JSON object by queue.
local suffixes = cjson.decode(A.suffixes)
local out = {}
for i = REST, #ARGV do
  local q = ARGV[i]
  local ready = 0
  for _, suf in ipairs(suffixes) do ready = ready + redis.call('LLEN', q .. suf) end
  out[q] = {ready = ready, in_flight = 0, pool_slots = 0, pending = 0, running = 0}
end
for _, raw in ipairs(redis.call('HVALS', K.unacked)) do
  local rk = string.match(raw, '"([^"]*)"%s*%]%s*$')
  if rk and out[rk] then out[rk].in_flight = out[rk].in_flight + 1 end
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', K.pools, A.since, '+inf')) do
  local base = A.pool_prefix .. id .. ':'
  local c = redis.call('HMGET', base .. 'counts', ENTRY.pending, ENTRY.running)
  local pending, running = tonumber(c[1] or '0') or 0, tonumber(c[2] or '0') or 0
  if pending + running > 0 then
    local m = redis.call('HMGET', base .. 'meta', 'queue', 'batch_size', 'lanes')
    local row = out[m[1] or '']
    if row then
      local bs = math.max(1, tonumber(m[2] or '1') or 1)
      local lanes = tonumber(m[3] or '0') or 0
      local slots = math.ceil((pending + running) / bs)
      if lanes > 0 and slots > lanes then slots = lanes end
      row.pool_slots = row.pool_slots + slots
      row.pending = row.pending + pending
      row.running = row.running + running
    end
  end
end
return cjson.encode(out)
