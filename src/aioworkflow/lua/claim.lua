-- claim.lua: a worker is about to run a node's message; decide whether it may.
-- KEYS: the 14 workflow keys (see _lib.lua)
-- ARGV: workflow id, node index (or "s"/"f" for the success/failure callback), message id,
--       then the nodes whose stored results the node's piped input needs
-- Reply: {code, results...}
--   code 0: run it (results follow, in ARGV order, nil where missing)
--        1: the node already completed: skip      2: workflow cancelled/ended: skip
--        3: workflow paused or failed: the node is held for resume/retry, skip this delivery
--        4: another delivery of this node is in flight: skip
--        5: the node has not been released (predecessors unfinished): a stray copy, skip
--       -1: no such workflow
-- A redelivery of the same message (same id: worker crash, dramatiq retry) may run again.
local state = redis.call('HGET', META, 'state')
if not state then return {-1} end
local node, mid = ARGV[2], ARGV[3]
if node == 's' or node == 'f' then
    redis.call('ZREM', READY, node)
    local prev = redis.call('HGET', CLAIMS, node)
    if prev and prev ~= mid then return {4} end
    redis.call('HSET', CLAIMS, node, mid)
    settle(state)
    return {0}
end
if redis.call('GETBIT', DONE, tonumber(node)) == 1 then
    redis.call('ZREM', READY, node)
    return {1}
end
if state == 'CANCELLED' or state == 'SUCCEEDED' then
    redis.call('ZREM', READY, node)
    return {2}
end
if state == 'PAUSED' or state == 'FAILED' then
    redis.call('ZREM', READY, node)
    redis.call('HDEL', CLAIMS, node)
    redis.call('SADD', HELD, node)
    settle(state)
    return {3}
end
if redis.call('BITFIELD', CNT, 'GET', 'u32', '#' .. node)[1] ~= 0 then return {5} end
local prev = redis.call('HGET', CLAIMS, node)
if prev and prev ~= mid then return {4} end
redis.call('HSET', CLAIMS, node, mid)
redis.call('ZREM', READY, node)
if #ARGV > 3 then
    return {0, unpack(redis.call('HMGET', RES, unpack(ARGV, 4)))}
end
return {0}
