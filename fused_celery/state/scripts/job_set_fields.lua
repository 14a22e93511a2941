-- Set meta fields (ARGV[REST..]: field, value pairs); none: only the heartbeat.
if #ARGV < REST then redis.call('HSET', K.meta, 'last_progress_at', A.now) end
for i = REST, #ARGV, REST_WIDTH do
  redis.call('HSET', K.meta, ARGV[i + R.field], ARGV[i + R.value])
end
refresh()
return 1
