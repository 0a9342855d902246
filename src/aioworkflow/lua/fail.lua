-- fail.lua: dramatiq gave up on a node (retries exhausted, throws, age limit, unknown actor).
-- In one atomic step: record the failure, apply T.fail (RUNNING | PAUSED -> FAILED: nothing new
-- is released from then on), record which node failed and why, and dispatch on_failure once.
-- KEYS: the 14 workflow keys (see _lib.lua), then queue key pairs (direct mode)
-- ARGV: workflow id, node index, actor name, exception type, exception message
-- Reply: {outcome, state, callback}
--   outcome OUT.APPLIED: recorded; OUT.UNCHANGED: node already done or already failed;
--   OUT.MISSING: no workflow
--   callback: CB.FAILURE when on_failure was dispatched by this call, else ""
local state, mode = load_meta(F.mode)
if not state then return {OUT.MISSING, '', ''} end
local node = ARGV[2]
local v = tonumber(node)
if redis.call('GETBIT', DONE, v) == 1 then return {OUT.UNCHANGED, state, ''} end
redis.call('HDEL', CLAIMS, node)
if redis.call('SADD', FAILED, node) == 0 then return {OUT.UNCHANGED, state, ''} end
local now = now_ms()
redis.call('HINCRBY', META, F.failed_count, 1)
event(EVENT.NODE_FAILED, v, state)
local cb = ''
local to = T.fail[state]
if to then
    state = to
    set_state(state, now)
    redis.call('HSET', META, F.finished, now, F.failed_node, node, F.failed_actor, ARGV[3],
        F.exc_type, ARGV[4], F.exc_message, ARGV[5])
    if redis.call('HEXISTS', META, CB_FIELD[CB.FAILURE]) == 1 then
        dispatch(CB.FAILURE, mode, now, {})
        cb = CB.FAILURE
    end
end
settle(state)
return {OUT.APPLIED, state, cb}
