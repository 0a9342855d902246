-- claim.lua: a worker is about to run a node's message; decide whether it may.
-- KEYS: the 14 workflow keys (see _lib.lua)
-- ARGV: workflow id, node index (or a CB kind for a callback), claim key (the delivery's push
--       id: fresh per push, kept by redeliveries; the message id for a message queued before
--       push ids, whose ref has none), message token ("" for a message without one), attempt
--       (1 for a first delivery, dramatiq's retries + 1), then the nodes whose stored results
--       the node's piped input needs
-- Reply: {code, results...} with a CLAIM code (_machine.ClaimCode):
--   CLAIM.RUN: run it (results follow, in ARGV order, nil where missing)
--   CLAIM.DONE: the node already completed        CLAIM.ENDED: workflow cancelled/succeeded
--   CLAIM.HELD: workflow paused or failed: the node is held for resume/retry, skip this copy
--   CLAIM.DUPLICATE: another delivery of this node is in flight
--   CLAIM.UNRELEASED: predecessors unfinished: a stray copy     CLAIM.MISSING: no workflow
--   {CLAIM.REJECTED, why}: not a delivery of this submission (REJECT.TOKEN: wrong token;
--     REJECT.NODE: not a node index 0 <= n < total); nothing written
--   {CLAIM.LOST, key}: a key of the live workflow is missing (evicted): nothing written; the
--     worker then runs fail.lua for the node, which applies T.lose
-- A task node that may RUN gets an EVENT.NODE_STARTED entry with its attempt (every run, a
-- redelivery of the same message too: it runs again).
-- The state alone decides ENDED and HELD (CLAIM_IN_STATE). A redelivery of the same message
-- (same claim key: worker crash, dramatiq retry) may run again; a re-send of the node
-- (reconciler, retry, resume) has a new one. Every push keeps the user's message id, so the
-- message id cannot tell them apart. Everything is read and checked before
-- the first write.
local PIPE_SLICE = 4000
local state, total, mtok, succeeded = load_meta(F.total, F.msg_token, F.succeeded)
if not state then return {CLAIM.MISSING} end
local node, mid, tok = ARGV[2], ARGV[3], ARGV[4] -- mid: the claim key
if not token_ok(mtok, tok) then return {CLAIM.REJECTED, REJECT.TOKEN} end
if IS_CB[node] then
    redis.call('ZREM', READY, node)
    local prev = redis.call('HGET', CLAIMS, node)
    if prev and prev ~= mid then return {CLAIM.DUPLICATE} end
    redis.call('HSET', CLAIMS, node, mid)
    settle(state)
    return {CLAIM.RUN}
end
local v = task_node(node, total)
if not v then return {CLAIM.REJECTED, REJECT.NODE} end
for i = 6, #ARGV do
    if not task_node(ARGV[i], total) then return {CLAIM.REJECTED, REJECT.NODE} end
end
if redis.call('GETBIT', DONE, v) == 1 then
    redis.call('ZREM', READY, node)
    return {CLAIM.DONE}
end
local decided = CLAIM_IN_STATE[state]
if decided == CLAIM.ENDED then
    redis.call('ZREM', READY, node)
    return {decided}
end
if state ~= S.PENDING then
    local missing = missing_key(total, succeeded)
    -- claim has no queue keys to dispatch on_failure with: the worker runs fail.lua for this
    -- node, which finds the same key missing and applies T.lose
    if missing then return {CLAIM.LOST, missing} end
end
local unreleased = redis.call('BITFIELD', CNT, 'GET', 'u32', '#' .. node)[1] ~= 0
-- only a released node may be held: resume/retry release the held set, so holding a stray copy
-- of a node whose predecessors have not finished would release it early
if unreleased then return {CLAIM.UNRELEASED} end
if decided == CLAIM.HELD then
    redis.call('ZREM', READY, node)
    redis.call('HDEL', CLAIMS, node)
    redis.call('SADD', HELD, node)
    settle(state)
    return {decided}
end
local prev = redis.call('HGET', CLAIMS, node)
if prev and prev ~= mid then return {CLAIM.DUPLICATE} end
-- the attempt only labels the event: anything but a small positive integer reads as 1
local attempt = string.match(ARGV[5] or '', '^[1-9]%d?%d?%d?%d?%d?$') or '1'
-- the results, read before the first write, in slices: unpack fails past ~8000 values, and a
-- piped step after a wide group needs one result per branch
local reply = {CLAIM.RUN}
for lo = 6, #ARGV, PIPE_SLICE do
    local part = redis.call('HMGET', RES, unpack(ARGV, lo, math.min(lo + PIPE_SLICE - 1, #ARGV)))
    for i = 1, #part do reply[#reply + 1] = part[i] end
end
redis.call('HSET', CLAIMS, node, mid)
redis.call('ZREM', READY, node)
redis.call('XADD', EV, 'MAXLEN', '~', EV_MAXLEN, '*', EVENT_FIELD.kind, EVENT.NODE_STARTED,
    EVENT_FIELD.node, v, EVENT_FIELD.state, state, EVENT_FIELD.attempt, attempt)
return reply
