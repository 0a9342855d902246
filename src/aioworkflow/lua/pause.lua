-- pause.lua: compare-and-set T.pause (RUNNING -> PAUSED). While paused, released nodes and
-- queued deliveries are held (claim.lua, complete.lua) until resume.lua.
-- KEYS: the 14 workflow keys (see _lib.lua)
-- ARGV: workflow id
-- Reply: {outcome, state}  OUT.APPLIED: paused now; OUT.UNCHANGED: not RUNNING (state says
--   what); OUT.MISSING: no such workflow
local state = load_meta()
if not state then return {OUT.MISSING, ''} end
local to = T.pause[state]
if not to then return {OUT.UNCHANGED, state} end
set_state(to, now_ms())
return {OUT.APPLIED, to}
