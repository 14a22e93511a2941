-- A client reads entries' states, outcomes and logs in one go. Returns one JSON string
-- [[state...], [outcome JSON...], [logs...]] in the order of the positions given, null where a
-- field is missing: one string parses faster in the client than three bulk strings per entry
-- (10,000 entries, under cProfile: 0.07 s against 0.23 s through redis-py's parser).
local fields = {}
for i = REST, #ARGV, REST_WIDTH do fields[#fields + 1] = ARGV[i + R.pos] end
local out = {}
for k, key in ipairs({K.state, K.outcome, K.logs}) do
  local got = {}
  for i = 1, #fields, 1000 do
    local part = redis.call('HMGET', key, unpack(fields, i, math.min(i + 999, #fields)))
    for j = 1, #part do got[#got + 1] = part[j] or cjson.null end
  end
  out[k] = got
end
return cjson.encode(out)
