-- reconcile.lua: find released entries nobody claimed for `age` ms (their enqueue was lost:
-- a worker died between this store and the broker) and hand them out again. Each returned
-- entry's timestamp is bumped, so concurrent reconcilers do not both re-enqueue it; a
-- duplicate that still gets through is skipped by claim.lua.
-- KEYS: the 14 workflow keys (see _lib.lua), then queue key pairs (direct mode)
-- ARGV: workflow id, age in ms, max entries
-- Reply: {status, state, remaining ready entries, entries to enqueue...}
--   status 1: ok; -1: no such workflow (the caller drops it from the active index)
local state = redis.call('HGET', META, 'state')
if not state then return {-1, '', 0} end
local now = now_ms()
local mode = redis.call('HGET', META, 'mode')
local stale = redis.call('ZRANGEBYSCORE', READY, '-inf', now - tonumber(ARGV[2]),
    'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, f in ipairs(stale) do
    if f == 's' or f == 'f' then
        redis.call('ZADD', READY, now, f)
        out[#out + 1] = f
    elseif redis.call('GETBIT', DONE, tonumber(f)) == 1 then
        redis.call('ZREM', READY, f)
    elseif state == 'RUNNING' then
        if mode == 'd' then
            redis.call('ZREM', READY, f)
            push(f, now)
        else
            redis.call('ZADD', READY, now, f)
        end
        out[#out + 1] = tonumber(f)
    elseif state == 'PAUSED' or state == 'FAILED' then
        redis.call('ZREM', READY, f)
        redis.call('SADD', HELD, f)
    else
        redis.call('ZREM', READY, f)
    end
end
settle(state)
return {1, state, redis.call('ZCARD', READY), unpack(out)}
