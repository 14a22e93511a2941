-- A client reads a pool's version and every entry's state as one JSON string
-- [version or null, [position, state, ...]]: it parses many times faster in the client than
-- the two bulk strings per entry of an HGETALL reply.
local v = redis.call('GET', K.version)
return cjson.encode({v or cjson.null, redis.call('HGETALL', K.state)})
