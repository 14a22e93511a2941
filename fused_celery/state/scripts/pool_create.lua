-- A client writes a pool's whole record, every key with its TTL, and indexes the pool.
-- A.meta: JSON object of the meta fields (string values). The counts hash gets every entry
-- status, 0 but pending (n). A.inline '1': also write the bulk of the record from the
-- encoded arguments (ARGV[REST..]): args, state, the first messages' task ids <pool_id>.b<k>,
-- backlog; '0': the same MULTI wrote them first (see PoolRecord.create). A capped pool's
-- lane j starts with b<j>.
local ttl, tomb_ttl = tonumber(A.ttl), tonumber(A.tomb_ttl)
local n, bs, nl = tonumber(A.n), tonumber(A.batch_size), tonumber(A.lanes)
local pool, ph = A.pool_id, A.placeholder
-- one command per 4,000 values at most (Lua's unpack has a limit)
local function put(cmd, key, list)
  for i = 1, #list, 4000 do
    redis.call(cmd, key, unpack(list, i, math.min(#list, i + 3999)))
  end
end
local meta, counts = {}, {}
for field, value in pairs(cjson.decode(A.meta)) do
  meta[#meta + 1] = field
  meta[#meta + 1] = value
end
put('HSET', K.meta, meta)
for _, status in ipairs(ENTRY_STATUSES) do
  counts[#counts + 1] = status
  counts[#counts + 1] = (status == ENTRY.pending) and n or 0
end
put('HSET', K.counts, counts)
local nb = math.ceil(n / bs)
if A.inline == '1' then
  local args, state, tasks, backlog = {}, {}, {}, {}
  local initial = ENTRY.pending .. '|1||'
  for p = 0, n - 1 do
    args[#args + 1] = ARGV[REST + p]
    state[#state + 1] = tostring(p)
    state[#state + 1] = initial
  end
  put('RPUSH', K.args, args)
  put('HSET', K.state, state)
  local first = nb
  if nl > 0 then first = math.min(nl, nb) end
  for b = 0, first - 1 do
    for p = b * bs, math.min(n, (b + 1) * bs) - 1 do
      tasks[#tasks + 1] = tostring(p)
      tasks[#tasks + 1] = pool .. '.b' .. b
    end
  end
  put('HSET', K.tasks, tasks)
  if nl > 0 then
    for b = nl, nb - 1 do backlog[#backlog + 1] = 'b' .. b end
    put('RPUSH', K.backlog, backlog)
  end
end
-- keys.PLACEHOLDER_HASHES and keys.PLACEHOLDER_SETS
for _, key in ipairs({K.outcome, K.logs, K.hosts, K.history, K.deliveries, K.lanes, K.items}) do
  redis.call('HSET', key, ph, '')
end
for _, key in ipairs({K.cancelled, K.begun}) do redis.call('SADD', key, ph) end
if nl > 0 then
  local lanes = {}
  for j = 0, nl - 1 do
    lanes[#lanes + 1] = tostring(j)
    lanes[#lanes + 1] = 'b' .. j
  end
  put('HSET', K.lanes, lanes)
end
redis.call('SET', K.version, 0)
for _, key in ipairs(KEYS) do
  if key ~= K.tomb and key ~= K.pools then redis.call('EXPIRE', key, ttl) end
end
redis.call('SET', K.tomb, A.created, 'EX', tomb_ttl)
redis.call('ZADD', K.pools, A.created, pool)
redis.call('ZREMRANGEBYSCORE', K.pools, '-inf', A.trim_before)
return 1
