-- Helpers of the job scripts that write a record (K: every job part; A: ttl, now, log_cap,
-- events (the job's channel) first). The record must exist: a late write never recreates part
-- of an expired job.

-- renew the TTL of every key of the job
local function refresh()
  for _, key in ipairs({K.meta, K.stages, K.done, K.failed, K.errors, K.logs, K.members}) do
    redis.call('EXPIRE', key, A.ttl)
  end
end

local function append_log(level, message)
  local seq = redis.call('HINCRBY', K.meta, 'log_seq', 1)
  local ts_ms = math.floor(tonumber(A.now) * 1000)
  redis.call('RPUSH', K.logs, cjson.encode({seq = seq, ts_ms = ts_ms, level = level,
                                            message = message}))
  redis.call('LTRIM', K.logs, -tonumber(A.log_cap), -1)
end

local function finish(status, reason, result)
  redis.call('HSET', K.meta, 'status', status, 'finished_at', A.now, 'last_progress_at', A.now)
  if reason ~= '' then redis.call('HSET', K.meta, 'reason', reason) end
  if result ~= '' then redis.call('HSET', K.meta, 'result', result) end
  local line = 'job ' .. status
  if reason ~= '' then line = line .. ': ' .. reason end
  local level = 'INFO'
  if status == JOB.Failed then level = 'ERROR' end
  append_log(level, line)
  redis.call('PUBLISH', A.events, status)
end

if redis.call('EXISTS', K.meta) == 0 then return -1 end
