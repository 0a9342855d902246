-- cancel.lua: compare-and-set T.cancel (PENDING | RUNNING | PAUSED | FAILED -> CANCELLED).
-- Nothing is released afterwards; queued messages are skipped by claim.lua.
-- KEYS: the 14 workflow keys (see _lib.lua)
-- ARGV: workflow id
-- Reply: {outcome, state}  OUT.APPLIED: cancelled now; OUT.UNCHANGED: already ended (state
--   says how); OUT.MISSING: no such workflow
local state = load_meta()
if not state then return {OUT.MISSING, ''} end
local to = T.cancel[state]
if not to then return {OUT.UNCHANGED, state} end
local now = now_ms()
set_state(to, now)
redis.call('HSET', META, F.finished, now)
redis.call('DEL', HELD, READY)
settle(to)
return {OUT.APPLIED, to}
