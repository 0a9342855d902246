-- retry.lua: compare-and-set T.retry (FAILED -> RUNNING); release the failed nodes and the
-- nodes held while the workflow was failed, each once; clear the failure record. A second,
-- concurrent retry finds RUNNING and changes nothing.
-- KEYS: the 14 workflow keys (see _lib.lua), then queue key pairs (direct mode)
-- ARGV: workflow id
-- Reply: {outcome, state, released...}  OUT.APPLIED: retried; OUT.UNCHANGED: not FAILED;
--   OUT.MISSING: no such workflow
local state, mode = load_meta(F.mode)
if not state then return {OUT.MISSING, ''} end
local to = T.retry[state]
if not to then return {OUT.UNCHANGED, state} end
local now = now_ms()
persist()
set_state(to, now)
redis.call('HDEL', META, F.finished, F.failed_node, F.failed_actor, F.exc_type, F.exc_message)
redis.call('HSET', META, F.failed_count, 0)
local out = {OUT.APPLIED, to}
local seen = {}
for _, set in ipairs({FAILED, HELD}) do
    for _, node in ipairs(redis.call('SMEMBERS', set)) do
        if not seen[node] and redis.call('GETBIT', DONE, tonumber(node)) == 0 then
            seen[node] = true
            redis.call('HDEL', CLAIMS, node)
            release(tonumber(node), to, mode, now, out)
        end
    end
end
redis.call('DEL', FAILED, HELD)
return out
