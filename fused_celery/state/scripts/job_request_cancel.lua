-- Set the durable cancel flag; a job that has not started is finished at once.
local status = redis.call('HGET', K.meta, 'status')
if JOB_TERMINAL[status] then return 0 end
if redis.call('HSETNX', K.meta, 'cancel_requested', '1') == 1 then
  append_log('WARNING', 'cancel requested')
end
if status == JOB.Pending then finish(JOB.Canceled, 'canceled before it started', '') end
refresh()
return 1
