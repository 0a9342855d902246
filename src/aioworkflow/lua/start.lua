-- start.lua: move a stored workflow from PENDING to RUNNING and release its roots.
-- Big root sets are released in several calls: the first with phase "first", the rest "more".
-- KEYS: the 14 workflow keys (see _lib.lua), then queue key pairs (direct mode)
-- ARGV: workflow id, phase ("first" | "more"), root node indices...
-- Reply: {status, state, released...}
--   status 1: done; 0: the workflow was not PENDING ("first"), nothing changed; -1: no workflow
local state = redis.call('HGET', META, 'state')
if not state then return {-1, ''} end
local now = now_ms()
local mode = redis.call('HGET', META, 'mode')
local out = {}
if ARGV[2] == 'first' then
    if state ~= 'PENDING' then return {0, state} end
    persist()
    redis.call('HSET', META, 'started', now)
    if tonumber(redis.call('HGET', META, 'total')) == 0 then
        set_state('SUCCEEDED', now)
        redis.call('HSET', META, 'finished', now)
        if redis.call('HEXISTS', META, 'cb_s') == 1 then dispatch('s', mode, now, out) end
        settle('SUCCEEDED')
        return {1, 'SUCCEEDED', unpack(out)}
    end
    state = 'RUNNING'
    set_state(state, now)
end
for i = 3, #ARGV do
    release(tonumber(ARGV[i]), state, mode, now, out)
end
settle(state)
return {1, state, unpack(out)}
