-- Mark task A.task_key finished; returns 1 the first time.
local added = redis.call('SADD', K.done, A.task_key)
redis.call('HSET', K.meta, 'last_progress_at', A.now)
refresh()
return added
