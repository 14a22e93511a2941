-- Begin stage A.stage with A.total tasks (once per stage name; not on a terminal job).
local status = redis.call('HGET', K.meta, 'status')
if JOB_TERMINAL[status] then return 0 end
if redis.call('HSETNX', K.stages, A.stage, A.total) == 0 then return 0 end
redis.call('HINCRBY', K.meta, 'total_tasks', A.total)
redis.call('HSET', K.meta, 'stage', A.stage, 'last_progress_at', A.now)
if status == JOB.Pending then
  redis.call('HSET', K.meta, 'status', JOB.Running)
  redis.call('HSETNX', K.meta, 'started_at', A.now)
end
append_log('INFO', 'stage ' .. A.stage .. ': ' .. A.total .. ' tasks')
refresh()
return 1
