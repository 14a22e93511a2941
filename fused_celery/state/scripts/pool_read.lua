-- A client reads entries' states, outcomes and logs in one go. Returns one JSON string
-- [[state...], [outcome...], [logs...]] in the order of the positions given, null where a
-- field is missing. The outcomes are put in as they are stored (JSON texts), not as strings:
-- the client parses everything in one json.loads (one string parses faster in the client than
-- three bulk strings per entry: 10,000 entries, under cProfile, 0.07 s against 0.23 s through
-- redis-py's parser; and outcomes that are not strings need no escaping here nor a second
-- parse there).
local fields = {}
for i = REST, #ARGV, REST_WIDTH do fields[#fields + 1] = ARGV[i + R.pos] end
local function read(key, missing)
  local got = hmget_chunked(key, fields)
  for j = 1, #got do got[j] = got[j] or missing end
  return got
end
return '[' .. cjson.encode(read(K.state, cjson.null)) .. ',['
  .. table.concat(read(K.outcome, 'null'), ',') .. '],'
  .. cjson.encode(read(K.logs, cjson.null)) .. ']'
