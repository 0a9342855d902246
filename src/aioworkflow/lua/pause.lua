-- pause.lua: compare-and-set RUNNING -> PAUSED. While paused, released nodes and queued
-- deliveries are held (claim.lua, complete.lua) until resume.lua.
-- KEYS: the 14 workflow keys (see _lib.lua)
-- ARGV: workflow id
-- Reply: {status, state}  status 1: paused now; 0: not RUNNING (state says what); -1: none
local state = redis.call('HGET', META, 'state')
if not state then return {-1, ''} end
if state ~= 'RUNNING' then return {0, state} end
set_state('PAUSED', now_ms())
return {1, 'PAUSED'}
