-- A client retries entries of a capped pool: moves them to their new attempt, queues them as
-- retry items behind the lanes' backlog, and hands items to idle lanes at once.
-- Returns {moved, json([lane, item, pos, att, ...]) ...}, or {-1} if the record is gone.
if redis.call('EXISTS', K.state) == 0 then return {-1} end
local n, bs, nl = tonumber(A.n), tonumber(A.batch_size), tonumber(A.n_lanes)
local moved = {}
for i = REST, #ARGV, REST_WIDTH do
  local pos, att = ARGV[i + R.pos], tonumber(ARGV[i + R.attempt])
  local cur = redis.call('HGET', K.state, pos)
  if cur then
    local st, ca = parse(cur)
    if ca < att then
      redis.call('SREM', K.cancelled, pos)
      setstate(pos, st, ENTRY.pending, ENTRY.pending .. '|' .. att .. '||')
      redis.call('HDEL', K.tasks, pos)
      moved[#moved + 1] = tonumber(pos)
    end
  end
end
redis.call('HSET', K.meta, 'retried', A.now)
redis.call('PUBLISH', A.channel, redis.call('INCR', K.version))
local k = 0
for i = 1, #moved, bs do
  local chunk = {}
  for t = i, math.min(i + bs - 1, #moved) do chunk[#chunk + 1] = moved[t] end
  local id = 'r' .. A.tag .. '.' .. k
  k = k + 1
  redis.call('HSET', K.items, id, cjson.encode(chunk))
  redis.call('RPUSH', K.backlog, id)
end
local ttl = redis.call('PTTL', K.state)
if ttl > 0 then redis.call('PEXPIRE', K.backlog, ttl) end
local out = {#moved}
for j = 0, nl - 1 do
  local cur = redis.call('HGET', K.lanes, tostring(j))
  if not cur or cur == 'end' then
    local res = next_item(tostring(j), '', n, bs, A.pool_id)
    if not res then break end
    table.insert(res, 1, j)
    out[#out + 1] = cjson.encode(res)
  end
end
return out
