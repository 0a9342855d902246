-- resume.lua: compare-and-set PAUSED -> RUNNING and release every held node exactly once
-- (the held set is emptied in the same step).
-- KEYS: the 14 workflow keys (see _lib.lua), then queue key pairs (direct mode)
-- ARGV: workflow id
-- Reply: {status, state, released...}  status 1: resumed; 0: not PAUSED; -1: none
local state = redis.call('HGET', META, 'state')
if not state then return {-1, ''} end
if state ~= 'PAUSED' then return {0, state} end
local now = now_ms()
set_state('RUNNING', now)
local mode = redis.call('HGET', META, 'mode')
local out = {}
for _, node in ipairs(redis.call('SMEMBERS', HELD)) do
    if redis.call('GETBIT', DONE, tonumber(node)) == 0 then
        dispatch(tonumber(node), mode, now, out)
    end
end
redis.call('DEL', HELD)
return {1, 'RUNNING', unpack(out)}
