-- Reading many fields of one hash: one HMGET per HMGET_CHUNK fields (under unpack's limit).
local HMGET_CHUNK = 1000

-- The values of `fields` of hash `key`, in order (false where absent).
local function hmget_chunked(key, fields)
  local out = {}
  for i = 1, #fields, HMGET_CHUNK do
    local got = redis.call('HMGET', key, unpack(fields, i, math.min(i + HMGET_CHUNK - 1, #fields)))
    for j = 1, #got do out[#out + 1] = got[j] end
  end
  return out
end
