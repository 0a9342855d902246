-- complete.lua: a node's task succeeded. In one atomic step: count it once (done bit), store
-- its result if needed, decrement its successors' counters, cascade through join vertices,
-- release what reached zero, and after the last node apply T.finish (on_success dispatched).
-- KEYS: the 14 workflow keys (see _lib.lua), then queue key pairs (direct mode)
--       then, to ack the RedisBroker delivery here too: its ack set, its queue's .msgs hash,
--       the heartbeats zset (the last three keys)
-- ARGV: workflow id, node index, result blob, "1" to store the result else "0",
--       then (with the ack keys) the redis message id, the broker id, the time in ms
-- Reply: {outcome, state, callback, released...}
--   outcome OUT.APPLIED: counted; OUT.UNCHANGED: already counted (duplicate), nothing changed;
--   OUT.MISSING: no workflow
--   callback: CB.SUCCESS when on_success was dispatched by this call, else ""
--   released: nodes released by this call (ready mode: the caller enqueues them)
if ARGV[5] then
    -- dramatiq's "ack" command, done here so that a success costs no separate ack round trip
    -- (the worker then skips its own); the heartbeat is what dramatiq's dispatch also beats
    local n = #KEYS
    if redis.call('SREM', KEYS[n - 2], ARGV[5]) == 1 then redis.call('HDEL', KEYS[n - 1], ARGV[5]) end
    redis.call('ZADD', KEYS[n], ARGV[7], ARGV[6])
end
local state, mode, total = load_meta(F.mode, F.total)
if not state then return {OUT.MISSING, '', ''} end
local node = ARGV[2]
local v = tonumber(node)
if redis.call('SETBIT', DONE, v, 1) == 1 then return {OUT.UNCHANGED, state, ''} end
local now = now_ms()
redis.call('HDEL', CLAIMS, node)
if redis.call('SREM', FAILED, node) == 1 then redis.call('HINCRBY', META, F.failed_count, -1) end
if ARGV[4] == '1' then redis.call('HSET', RES, node, ARGV[3]) end
local succeeded = redis.call('HINCRBY', META, F.succeeded, 1)
event(EVENT.NODE_SUCCEEDED, v, state)
-- a done node is never pushed again (retry re-runs only nodes not done): free its template
if mode == MODE.DIRECT then redis.call('HDEL', TPL, node) end
total = tonumber(total)
-- the reply, with released nodes appended by cascade (no unpack: no stack limit)
local out = {OUT.APPLIED, state, ''}
if state ~= S.CANCELLED then cascade(v, total, state, mode, now, out) end
local to = T.finish[state]
if succeeded == total and to then
    state = to
    set_state(state, now)
    redis.call('HSET', META, F.finished, now)
    if redis.call('HEXISTS', META, CB_FIELD[CB.SUCCESS]) == 1 then
        dispatch(CB.SUCCESS, mode, now, {})
        out[3] = CB.SUCCESS
    end
end
settle(state)
out[2] = state
return out
