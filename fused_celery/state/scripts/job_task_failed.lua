-- Mark task A.task_key finished and failed with A.error (kept for at most A.max_errors tasks);
-- the first failure of a key logs A.log_line at ERROR. Returns 1 the first time.
redis.call('SADD', K.done, A.task_key)
local first = redis.call('SADD', K.failed, A.task_key)
if redis.call('HEXISTS', K.errors, A.task_key) == 1
   or redis.call('HLEN', K.errors) < tonumber(A.max_errors) then
  redis.call('HSET', K.errors, A.task_key, A.error)
end
redis.call('HSET', K.meta, 'last_progress_at', A.now)
if first == 1 then append_log('ERROR', A.log_line) end
refresh()
return first
