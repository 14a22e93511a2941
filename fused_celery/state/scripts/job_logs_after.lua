-- Read only: {log_seq, the kept lines after A.seq...}.
local total = tonumber(redis.call('HGET', K.meta, 'log_seq') or '0')
local k = total - tonumber(A.seq)
local out = {total}
if k <= 0 then return out end
for _, line in ipairs(redis.call('LRANGE', K.logs, -k, -1)) do out[#out + 1] = line end
return out
