-- retry.lua: compare-and-set FAILED -> RUNNING; release the failed nodes and the nodes held
-- while the workflow was failed, each once; clear the failure record. A second, concurrent
-- retry finds RUNNING and changes nothing.
-- KEYS: the 14 workflow keys (see _lib.lua), then queue key pairs (direct mode)
-- ARGV: workflow id
-- Reply: {status, state, released...}  status 1: retried; 0: not FAILED; -1: none
local state = redis.call('HGET', META, 'state')
if not state then return {-1, ''} end
if state ~= 'FAILED' then return {0, state} end
local now = now_ms()
persist()
set_state('RUNNING', now)
redis.call('HDEL', META, 'finished', 'fnode', 'factor', 'fexc', 'fmsg')
redis.call('HSET', META, 'nf', 0)
local mode = redis.call('HGET', META, 'mode')
local out = {}
local seen = {}
for _, set in ipairs({FAILED, HELD}) do
    for _, node in ipairs(redis.call('SMEMBERS', set)) do
        if not seen[node] and redis.call('GETBIT', DONE, tonumber(node)) == 0 then
            seen[node] = true
            redis.call('HDEL', CLAIMS, node)
            dispatch(tonumber(node), mode, now, out)
        end
    end
end
redis.call('DEL', FAILED, HELD)
return {1, 'RUNNING', unpack(out)}
