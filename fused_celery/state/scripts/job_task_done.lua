-- Mark task A.task_key finished; returns 1 the first time. The first time, A.units are added to
-- meta field A.units_field (when not empty): the units of work (e.g. chunks) the task did.
local added = redis.call('SADD', K.done, A.task_key)
if added == 1 and A.units_field ~= '' then
  redis.call('HINCRBY', K.meta, A.units_field, tonumber(A.units))
end
redis.call('HSET', K.meta, 'last_progress_at', A.now)
refresh()
return added
