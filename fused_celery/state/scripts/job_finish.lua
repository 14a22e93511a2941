-- Move the job to terminal A.status (first one wins: 0 when it already was terminal).
if JOB_TERMINAL[redis.call('HGET', K.meta, 'status')] then return 0 end
finish(A.status, A.reason, A.result)
refresh()
return 1
