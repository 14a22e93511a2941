-- A worker begins a message: decide per entry whether to run it (and hand out its encoded
-- arguments). A.want_meta '1': read the cache settings from K.meta (not A) and return the
-- meta hash too. Returns 'unborn' (no record and no tombstone: not written yet), 'gone',
-- 'dup', or {JSON of [meta JSON object ('' unless want_meta), (pos, decision, args, cache
-- key)...]}: one string parses much faster in the client than a reply of 4 elements per entry.
if redis.call('EXISTS', K.state) == 0 then
  if redis.call('EXISTS', K.tomb) == 0 then return 'unborn' end
  return 'gone'
end
if redis.call('SADD', K.begun, A.task_id) == 0 and A.redelivered ~= '1' then return 'dup' end
local now = A.now
local maxd = tonumber(A.max_deliveries)
local digest = A.cache_digest
local maxage = tonumber(A.cache_max_age)
local out = {''}
if A.want_meta == '1' then
  local m = redis.call('HGETALL', K.meta)
  local f = {}
  for i = 1, #m, 2 do f[m[i]] = m[i + 1] end
  digest = (f['cache'] == '1' and f['cache_digest']) or ''
  maxage = tonumber(f['cache_max_age'] or '0') or 0
  out = {cjson.encode(f)}
end
local changed, finals = false, false
-- read ahead what every entry needs: states (one HMGET), whether any entry is cancelled, and
-- the arguments of consecutive positions in order (one LRANGE: a batch's usual shape)
local positions = {}
for i = REST, #ARGV, REST_WIDTH do positions[#positions + 1] = ARGV[i + R.pos] end
prefetch_states(positions)
local nc = redis.call('SCARD', K.cancelled)  -- (the set holds keys.PLACEHOLDER)
local any_cancelled = nc > 1
  or (nc == 1 and redis.call('SISMEMBER', K.cancelled, A.placeholder) == 0)
local first = tonumber(positions[1])
local consecutive = #positions > 1
for k = 2, #positions do
  if tonumber(positions[k]) ~= first + k - 1 then consecutive = false break end
end
local ranged = consecutive and redis.call('LRANGE', K.args, first, first + #positions - 1)
for i = REST, #ARGV, REST_WIDTH do
  local pos = ARGV[i + R.pos]
  local att = tonumber(ARGV[i + R.attempt])
  local cur = state_of(pos)
  local decision, a, ck = 'run', '', ''
  if not cur then
    decision = 'gone'
  else
    local st, ca = parse(cur)
    if any_cancelled and redis.call('SISMEMBER', K.cancelled, pos) == 1 then
      decision = ENTRY.cancelled  -- (the decision is the entry's status)
      if st == ENTRY.pending then
        stage_state(pos, st, ENTRY.cancelled, ENTRY.cancelled .. '|' .. ca .. '||')
        finals = true
      end
    elseif att < ca then
      decision = 'superseded'
    elseif att == ca and ENTRY_FINISHED[st] then
      decision = 'done'
    else
      local d = redis.call('HINCRBY', K.deliveries, pos .. ':' .. att, 1)
      if d > maxd then
        decision = 'lost'
      else
        if ranged then
          a = ranged[tonumber(pos) - first + 1] or ''
        else
          a = redis.call('LINDEX', K.args, tonumber(pos)) or ''
        end
        if digest ~= '' then
          ck = A.cache_prefix .. redis.sha1hex(digest .. '\n' .. a)
          local hit = redis.call('HMGET', ck, 'o', 'l', 't')
          if hit[1] and hit[3] and (tonumber(now) - tonumber(hit[3])) <= maxage then
            decision = 'cached'
            stage_state(pos, st, ENTRY.success,
                        ENTRY.success .. '|' .. att .. '|' .. now .. '|' .. now)
            finals = true
            stage_hset(K.outcome, pos, hit[1])
            stage_hset(K.logs, pos, hit[2] or '')
            stage_hset(K.hosts, pos, 'cache')
            stage_hset(K.tasks, pos, A.task_id)
            a = ''
          end
        end
        if decision == 'run' then
          stage_state(pos, st, ENTRY.running, ENTRY.running .. '|' .. att .. '|' .. now .. '|')
          stage_hset(K.hosts, pos, A.host)
          stage_hset(K.tasks, pos, A.task_id)
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
stage_flush()
-- entries that start only bump the version; waiters are woken for finished entries
if changed or finals then
  local v = redis.call('INCR', K.version)
  if finals then redis.call('PUBLISH', A.channel, v .. done_suffix()) end
end
return {cjson.encode(out)}
