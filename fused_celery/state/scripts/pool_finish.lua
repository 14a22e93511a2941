-- A worker records its entries' outcomes, or moves them to their next attempt (mode 'retry'),
-- announces it on the pool's channel (the new version, followed by ':done' once no entry is
-- pending or running), then (capped pools) picks the lane's next item.
-- A.payload_max > 0 (small pools): the event carries the record's new state as JSON
-- {v, c, s, o, l} (version, counts, state, outcome, logs) when that fits in payload_max bytes.
-- Returns {-2} (record gone), {-1} (no next item) or {item, pos, att, ...}.
if redis.call('EXISTS', K.state) == 0 then return {-2} end
local now = A.now
local ttl = tonumber(A.cache_ttl)
local positions = {}
for i = REST, #ARGV, REST_WIDTH do positions[#positions + 1] = ARGV[i + R.pos] end
prefetch_states(positions)
for i = REST, #ARGV, REST_WIDTH do
  local pos, att, status = ARGV[i + R.pos], tonumber(ARGV[i + R.attempt]), ARGV[i + R.status]
  local js, logs = ARGV[i + R.json], ARGV[i + R.logs]
  local t0, t1 = ARGV[i + R.started], ARGV[i + R.finished]
  local mode, ck = ARGV[i + R.mode], ARGV[i + R.cache_key]
  local cur = state_of(pos)
  if cur then
    local st, ca = parse(cur)
    if ca == att and (st == ENTRY.running or st == ENTRY.pending) then
      if mode == 'retry' then
        stage_state(pos, st, ENTRY.pending, ENTRY.pending .. '|' .. (att + 1) .. '||')
        stage_hset(K.history, pos .. ':' .. att, js)
        stage_hset(K.tasks, pos, A.retry_task_id)
      else
        stage_state(pos, st, status, status .. '|' .. att .. '|' .. t0 .. '|' .. t1)
        stage_hset(K.outcome, pos, js)
        stage_hset(K.logs, pos, logs)
        if ck ~= '' and status == ENTRY.success and ttl > 0 then
          redis.call('HSET', ck, 'o', js, 'l', logs, 't', now)
          redis.call('EXPIRE', ck, ttl)
        end
      end
    else
      stage_hset(K.history, pos .. ':' .. att, js)
    end
  end
end
stage_flush()
local v = redis.call('INCR', K.version)
local event = v
local pmax = tonumber(A.payload_max)
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
  local payload = {v = v, c = hash(K.counts), s = hash(K.state), o = hash(K.outcome),
                   l = hash(K.logs)}
  if size <= pmax then
    local body = cjson.encode(payload)
    if #body <= pmax then event = body end
  end
end
redis.call('PUBLISH', A.channel, event .. done_suffix())
if A.lane == '' or A.chain ~= '1' then return {-1} end
local n, bs = tonumber(A.n), tonumber(A.batch_size)
local j, mine = A.lane, A.lane_item
local cur = redis.call('HGET', K.lanes, j)
if cur == mine then
  return next_item(j, mine, n, bs, A.pool_id) or {-1}
end
if A.redelivered == '1' and cur and cur ~= 'end'
    and redis.call('HGET', K.lanes, j .. ':prev') == mine then
  -- redelivered after it chained: publish the same successor again (duplicates are dropped)
  local pend = pending_of(item_positions(cur, n, bs))
  if #pend == 0 then return {-1} end
  local res = {cur}
  for _, p in ipairs(pend) do res[#res + 1] = p end
  return res
end
return {-1}
