-- retry.lua: compare-and-set T.retry (FAILED -> RUNNING); release the failed nodes and the
-- nodes held while the workflow was failed, each once; clear the failure record. A second,
-- concurrent retry finds RUNNING and changes nothing.
-- KEYS: the 14 workflow keys (see _lib.lua), then queue key triples (direct mode)
-- ARGV: workflow id
-- Reply: {outcome, state, released...}  OUT.APPLIED: retried; OUT.UNCHANGED: not FAILED;
--   OUT.MISSING: no such workflow; {OUT.LOST, state, key}: a key (or a node's template) is
--   missing: the workflow cannot run again, nothing is written (it stays FAILED)
local state, mode, total, succeeded = load_meta(F.mode, F.total, F.succeeded)
if not state then return {OUT.MISSING, ''} end
local to = T.retry[state]
if not to then return {OUT.UNCHANGED, state} end
-- read and check everything first: the nodes to run again, and their templates
local nodes, seen = {}, {}
for _, set in ipairs({FAILED, HELD}) do
    for _, node in ipairs(redis.call('SMEMBERS', set)) do
        local v = task_node(node, total)
        if v and not seen[v] and redis.call('GETBIT', DONE, v) == 0 then
            seen[v] = true
            nodes[#nodes + 1] = v
        end
    end
end
local missing = missing_key(total, succeeded) or missing_template(mode, nodes)
if missing then
    local after, cb = lose(state, mode, '', missing)
    return {OUT.LOST, after, missing, cb}
end
local now = now_ms()
persist()
set_state(to, now)
redis.call('HDEL', META, F.finished, F.failed_node, F.failed_actor, F.exc_type, F.exc_message)
redis.call('HSET', META, F.failed_count, 0)
local out = {OUT.APPLIED, to}
for _, v in ipairs(nodes) do
    redis.call('HDEL', CLAIMS, v)
    release(v, to, mode, now, out)
end
redis.call('DEL', FAILED, HELD)
return out
