-- Keep what stage A.stage's chord was launched with (JSON A.value); not on a terminal job.
if JOB_TERMINAL[redis.call('HGET', K.meta, 'status')] then return 0 end
redis.call('HSET', K.members, A.stage, A.value)
refresh()
return 1
