-- cancel.lua: compare-and-set RUNNING | PAUSED | FAILED | PENDING -> CANCELLED.
-- Nothing is released afterwards; queued messages are skipped by claim.lua.
-- KEYS: the 14 workflow keys (see _lib.lua)
-- ARGV: workflow id
-- Reply: {status, state}  status 1: cancelled now; 0: already ended (state says how); -1: none
local state = redis.call('HGET', META, 'state')
if not state then return {-1, ''} end
if state == 'SUCCEEDED' or state == 'CANCELLED' then return {0, state} end
local now = now_ms()
set_state('CANCELLED', now)
redis.call('HSET', META, 'finished', now)
redis.call('DEL', HELD, READY)
settle('CANCELLED')
return {1, 'CANCELLED'}
