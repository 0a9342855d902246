-- submit.lua: claim a workflow id for one submission, with a TTL from the first moment (a
-- submission abandoned half-way expires instead of leaking). The submission's token makes a
-- retried run() (after a lost connection) find its own claim again.
-- KEYS: the 14 workflow keys (see _lib.lua)
-- ARGV: workflow id, submission token, retention in ms
-- Reply: {SUBMIT.CLAIMED} claimed now; {SUBMIT.CLAIMED_BEFORE, state} claimed earlier by this
--   submission; {SUBMIT.TAKEN} the id is taken
local ttl = tonumber(ARGV[3])
if ARGV[2] == '' or not ttl or ttl < 1 or ttl ~= math.floor(ttl) then
    return redis.error_reply('ERR submit.lua: bad token or retention')
end
local state = load_meta()
if redis.call('HGET', META, F.token) == ARGV[2] then
    return {SUBMIT.CLAIMED_BEFORE, state}
end
if redis.call('EXISTS', META) == 1 then return {SUBMIT.TAKEN} end
redis.call('HSET', META, F.state, S.PENDING, F.token, ARGV[2], F.format, FORMAT)
redis.call('PEXPIRE', META, ARGV[3])
return {SUBMIT.CLAIMED}
