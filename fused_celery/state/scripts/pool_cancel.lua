-- A client cancels every pending entry. Returns {cancelled, running, task ids to revoke...}.
local all = redis.call('HGETALL', K.state)
local n, running = 0, 0
local ids, seen = {}, {}
for i = 1, #all, 2 do
  local pos, v = all[i], all[i + 1]
  local st, a = parse(v)
  if st == ENTRY.pending then
    redis.call('SADD', K.cancelled, pos)
    setstate(pos, st, ENTRY.cancelled, ENTRY.cancelled .. '|' .. a .. '||')
    n = n + 1
    local t = redis.call('HGET', K.tasks, pos)
    if t and not seen[t] then
      seen[t] = true
      ids[#ids + 1] = t
    end
  elseif st == ENTRY.running then
    running = running + 1
  end
end
if n > 0 then redis.call('PUBLISH', A.channel, redis.call('INCR', K.version) .. done_suffix()) end
local out = {n, running}
for _, t in ipairs(ids) do out[#out + 1] = t end
return out
