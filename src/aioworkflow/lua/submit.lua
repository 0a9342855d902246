-- submit.lua: claim a workflow id for one submission, with a TTL from the first moment (a
-- submission abandoned half-way expires instead of leaking). The submission's token makes a
-- retried run() (after a lost connection) find its own claim again.
-- KEYS: the 14 workflow keys (see _lib.lua)
-- ARGV: workflow id, submission token, retention in ms
-- Reply: {1} claimed now; {2, state} claimed earlier by this submission; {0} the id is taken
if redis.call('HGET', META, 'tok') == ARGV[2] then
    return {2, redis.call('HGET', META, 'state')}
end
if redis.call('EXISTS', META) == 1 then return {0} end
redis.call('HSET', META, 'state', 'PENDING', 'tok', ARGV[2])
redis.call('PEXPIRE', META, ARGV[3])
return {1}
