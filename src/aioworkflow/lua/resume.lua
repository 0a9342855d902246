-- resume.lua: compare-and-set T.resume (PAUSED -> RUNNING) and release every held node exactly
-- once (the held set is emptied in the same step).
-- KEYS: the 14 workflow keys (see _lib.lua), then queue key pairs (direct mode)
-- ARGV: workflow id
-- Reply: {outcome, state, released...}  OUT.APPLIED: resumed; OUT.UNCHANGED: not PAUSED;
--   OUT.MISSING: no such workflow
local state, mode = load_meta(F.mode)
if not state then return {OUT.MISSING, ''} end
local to = T.resume[state]
if not to then return {OUT.UNCHANGED, state} end
local now = now_ms()
set_state(to, now)
local out = {OUT.APPLIED, to}
for _, node in ipairs(redis.call('SMEMBERS', HELD)) do
    if redis.call('GETBIT', DONE, tonumber(node)) == 0 then
        release(tonumber(node), to, mode, now, out)
    end
end
redis.call('DEL', HELD)
return out
