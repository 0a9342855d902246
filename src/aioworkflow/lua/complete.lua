-- complete.lua: a node's task succeeded. In one atomic step: count it once (done bit), store
-- its result if needed, decrement its successors' counters, cascade through join vertices,
-- release what reached zero, and end the workflow (on_success) after the last node.
-- KEYS: the 14 workflow keys (see _lib.lua), then queue key pairs (direct mode)
--       then, to ack the RedisBroker delivery here too: its ack set, its queue's .msgs hash,
--       the heartbeats zset (the last three keys)
-- ARGV: workflow id, node index, result blob, "1" to store the result else "0",
--       then (with the ack keys) the redis message id, the broker id, the time in ms
-- Reply: {status, state, callback, released...}
--   status 1: counted; 0: already counted (duplicate), nothing changed; -1: no workflow
--   callback: "s" when on_success was dispatched by this call, else ""
--   released: nodes released by this call (ready mode: the caller enqueues them)
if ARGV[5] then
    -- dramatiq's "ack" command, done here so that a success costs no separate ack round trip
    -- (the worker then skips its own); the heartbeat is what dramatiq's dispatch also beats
    local n = #KEYS
    if redis.call('SREM', KEYS[n - 2], ARGV[5]) == 1 then redis.call('HDEL', KEYS[n - 1], ARGV[5]) end
    redis.call('ZADD', KEYS[n], ARGV[7], ARGV[6])
end
local state = redis.call('HGET', META, 'state')
if not state then return {-1, '', ''} end
local node = ARGV[2]
local v = tonumber(node)
if redis.call('SETBIT', DONE, v, 1) == 1 then return {0, state, ''} end
local now = now_ms()
redis.call('HDEL', CLAIMS, node)
if redis.call('SREM', FAILED, node) == 1 then redis.call('HINCRBY', META, 'nf', -1) end
if ARGV[4] == '1' then redis.call('HSET', RES, node, ARGV[3]) end
local ok = redis.call('HINCRBY', META, 'ok', 1)
event('ok', v, state)
local mode = redis.call('HGET', META, 'mode')
-- a done node is never pushed again (retry re-runs only nodes not done): free its template
if mode == 'd' then redis.call('HDEL', TPL, node) end
local total = tonumber(redis.call('HGET', META, 'total'))
local out = {}
if state ~= 'CANCELLED' then cascade(v, total, state, mode, now, out) end
local cb = ''
if ok == total and state ~= 'CANCELLED' and state ~= 'SUCCEEDED' then
    state = 'SUCCEEDED'
    set_state(state, now)
    redis.call('HSET', META, 'finished', now)
    if redis.call('HEXISTS', META, 'cb_s') == 1 then
        local cbs = {}
        dispatch('s', mode, now, cbs)
        cb = 's'
    end
end
settle(state)
return {1, state, cb, unpack(out)}
