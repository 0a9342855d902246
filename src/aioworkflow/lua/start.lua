-- start.lua: move a stored workflow from PENDING to RUNNING and release its roots.
-- Big root sets are released in several calls: the first with phase "first", the rest "more".
-- Each call names the offset of its chunk in the root list; META's "rs" counts the roots
-- released so far, so a chunk sent again (a retried run()) releases nothing twice.
-- KEYS: the 14 workflow keys (see _lib.lua), then queue key pairs (direct mode)
-- ARGV: workflow id, phase ("first" | "more"), chunk offset, root node indices...
-- Reply: {status, state, released...}
--   status 1: done; 0: nothing changed (not PENDING on "first", chunk already released on
--   "more"); -1: no workflow
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
elseif tonumber(ARGV[3]) < tonumber(redis.call('HGET', META, 'rs') or '0') then
    return {0, state}
end
for i = 4, #ARGV do
    release(tonumber(ARGV[i]), state, mode, now, out)
end
redis.call('HSET', META, 'rs', tonumber(ARGV[3]) + #ARGV - 3)
settle(state)
return {1, state, unpack(out)}
