-- A client moves entries to a new attempt (each only if its current attempt is older), with
-- the task id of the message that will run it. Returns how many moved, -1 if the record is gone.
if redis.call('EXISTS', K.state) == 0 then return -1 end
local n = 0
for i = REST, #ARGV, REST_WIDTH do
  local pos, att, tid = ARGV[i + R.pos], tonumber(ARGV[i + R.attempt]), ARGV[i + R.task_id]
  local cur = redis.call('HGET', K.state, pos)
  if cur then
    local st, ca = parse(cur)
    if ca < att then
      redis.call('SREM', K.cancelled, pos)
      setstate(pos, st, ENTRY.pending, ENTRY.pending .. '|' .. att .. '||')
      redis.call('HSET', K.tasks, pos, tid)
      n = n + 1
    end
  end
end
redis.call('HSET', K.meta, 'retried', A.now)
redis.call('PUBLISH', A.channel, redis.call('INCR', K.version))
return n
