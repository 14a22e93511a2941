if redis.call('EXISTS', K.meta) == 0 then return -1 end
-- Add A.amount instance-seconds to meta field A.field (a task's run time / its worker's slots).
redis.call('HINCRBYFLOAT', K.meta, A.field, A.amount)
refresh()
return 1
