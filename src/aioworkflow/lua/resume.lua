-- resume.lua: compare-and-set T.resume (PAUSED -> RUNNING) and release every held node exactly
-- once (the held set is emptied in the same step).
-- KEYS: the 14 workflow keys (see _lib.lua), then queue key triples (direct mode)
-- ARGV: workflow id
-- Reply: {outcome, state, released...}  OUT.APPLIED: resumed; OUT.UNCHANGED: not PAUSED;
--   OUT.MISSING: no such workflow; {OUT.LOST, state, key, callback?}: a key (or a held node's
--   template) is missing: T.lose applied instead, nothing else written
local state, mode, total, succeeded = load_meta(F.mode, F.total, F.succeeded)
if not state then return {OUT.MISSING, ''} end
local to = T.resume[state]
if not to then return {OUT.UNCHANGED, state} end
-- read and check everything first: the held nodes still to run, and their templates
local nodes = {}
for _, node in ipairs(redis.call('SMEMBERS', HELD)) do
    local v = task_node(node, total)
    if v and redis.call('GETBIT', DONE, v) == 0 then nodes[#nodes + 1] = v end
end
local missing = missing_key(total, succeeded) or missing_template(mode, nodes)
if missing then
    local after, cb = lose(state, mode, '', missing)
    return {OUT.LOST, after, missing, cb}
end
local now = now_ms()
set_state(to, now)
local out = {OUT.APPLIED, to}
for _, v in ipairs(nodes) do release(v, to, mode, now, out) end
redis.call('DEL', HELD)
return out
