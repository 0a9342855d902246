-- claim.lua: a worker is about to run a node's message; decide whether it may.
-- KEYS: the 14 workflow keys (see _lib.lua)
-- ARGV: workflow id, node index (or a CB kind for a callback), message id,
--       then the nodes whose stored results the node's piped input needs
-- Reply: {code, results...} with a CLAIM code (_machine.ClaimCode):
--   CLAIM.RUN: run it (results follow, in ARGV order, nil where missing)
--   CLAIM.DONE: the node already completed        CLAIM.ENDED: workflow cancelled/succeeded
--   CLAIM.HELD: workflow paused or failed: the node is held for resume/retry, skip this copy
--   CLAIM.DUPLICATE: another delivery of this node is in flight
--   CLAIM.UNRELEASED: predecessors unfinished: a stray copy     CLAIM.MISSING: no workflow
-- The state alone decides ENDED and HELD (CLAIM_IN_STATE). A redelivery of the same message
-- (same id: worker crash, dramatiq retry) may run again.
local state = load_meta()
if not state then return {CLAIM.MISSING} end
local node, mid = ARGV[2], ARGV[3]
if IS_CB[node] then
    redis.call('ZREM', READY, node)
    local prev = redis.call('HGET', CLAIMS, node)
    if prev and prev ~= mid then return {CLAIM.DUPLICATE} end
    redis.call('HSET', CLAIMS, node, mid)
    settle(state)
    return {CLAIM.RUN}
end
if redis.call('GETBIT', DONE, tonumber(node)) == 1 then
    redis.call('ZREM', READY, node)
    return {CLAIM.DONE}
end
local decided = CLAIM_IN_STATE[state]
if decided == CLAIM.ENDED then
    redis.call('ZREM', READY, node)
    return {decided}
end
if decided == CLAIM.HELD then
    redis.call('ZREM', READY, node)
    redis.call('HDEL', CLAIMS, node)
    redis.call('SADD', HELD, node)
    settle(state)
    return {decided}
end
if redis.call('BITFIELD', CNT, 'GET', 'u32', '#' .. node)[1] ~= 0 then
    return {CLAIM.UNRELEASED}
end
local prev = redis.call('HGET', CLAIMS, node)
if prev and prev ~= mid then return {CLAIM.DUPLICATE} end
redis.call('HSET', CLAIMS, node, mid)
redis.call('ZREM', READY, node)
if #ARGV > 3 then
    local reply = redis.call('HMGET', RES, unpack(ARGV, 4))
    table.insert(reply, 1, CLAIM.RUN)
    return reply
end
return {CLAIM.RUN}
