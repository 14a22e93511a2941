-- Create a job's meta hash (ARGV[REST..]: field, value pairs) unless it exists, and index it
-- in K.jobs (the newest A.max_indexed are kept). Returns 1, or 0 if the job id is taken.
if redis.call('EXISTS', K.meta) == 1 then return 0 end
for i = REST, #ARGV, REST_WIDTH do
  redis.call('HSET', K.meta, ARGV[i + R.field], ARGV[i + R.value])
end
redis.call('EXPIRE', K.meta, A.ttl)
redis.call('ZADD', K.jobs, A.now, redis.call('HGET', K.meta, 'job_id'))
redis.call('ZREMRANGEBYRANK', K.jobs, 0, -tonumber(A.max_indexed) - 1)
return 1
