-- fail.lua: dramatiq gave up on a node (retries exhausted, throws, age limit, unknown actor).
-- In one atomic step: record the failure, move RUNNING/PAUSED to FAILED (nothing new is
-- released from then on), record which node failed and why, and dispatch on_failure once.
-- KEYS: the 14 workflow keys (see _lib.lua), then queue key pairs (direct mode)
-- ARGV: workflow id, node index, actor name, exception type, exception message
-- Reply: {status, state, callback}
--   status 1: recorded; 0: node already done or already failed; -1: no workflow
--   callback: "f" when on_failure was dispatched by this call, else ""
local state = redis.call('HGET', META, 'state')
if not state then return {-1, '', ''} end
local node = ARGV[2]
local v = tonumber(node)
if redis.call('GETBIT', DONE, v) == 1 then return {0, state, ''} end
redis.call('HDEL', CLAIMS, node)
if redis.call('SADD', FAILED, node) == 0 then return {0, state, ''} end
local now = now_ms()
redis.call('HINCRBY', META, 'nf', 1)
event('fail', v, state)
local cb = ''
if state == 'RUNNING' or state == 'PAUSED' then
    state = 'FAILED'
    set_state(state, now)
    redis.call('HSET', META, 'finished', now, 'fnode', node, 'factor', ARGV[3],
        'fexc', ARGV[4], 'fmsg', ARGV[5])
    if redis.call('HEXISTS', META, 'cb_f') == 1 then
        local cbs = {}
        dispatch('f', redis.call('HGET', META, 'mode'), now, cbs)
        cb = 'f'
    end
end
settle(state)
return {1, state, cb}
