-- Take or renew the autoscaler's leader lock K.lock for A.owner, for A.ttl_ms milliseconds.
-- Returns 1 when A.owner holds it now, 0 when another owner does.
local cur = redis.call('GET', K.lock)
if cur == A.owner then
  redis.call('PEXPIRE', K.lock, A.ttl_ms)
  return 1
end
if cur then return 0 end
redis.call('SET', K.lock, A.owner, 'PX', A.ttl_ms)
return 1
