-- reconcile.lua: find released entries nobody claimed for `age` ms (their enqueue was lost:
-- a worker died between this store and the broker) and hand them out again. Each returned
-- entry's timestamp is bumped, so concurrent reconcilers do not both re-enqueue it; a
-- duplicate that still gets through is skipped by claim.lua. What becomes of a stale node
-- follows ON_RELEASE, as for a fresh release.
-- KEYS: the 14 workflow keys (see _lib.lua), then queue key pairs (direct mode)
-- ARGV: workflow id, age in ms, max entries
-- Reply: {outcome, state, remaining ready entries, entries to enqueue...}
--   outcome OUT.APPLIED: ok; OUT.MISSING: no such workflow (the caller drops it from the
--   active index)
local state, mode = load_meta(F.mode)
if not state then return {OUT.MISSING, '', 0} end
local now = now_ms()
local stale = redis.call('ZRANGEBYSCORE', READY, '-inf', now - tonumber(ARGV[2]),
    'LIMIT', 0, tonumber(ARGV[3]))
local out = {OUT.APPLIED, state, 0}
local decision = ON_RELEASE[state]
for _, f in ipairs(stale) do
    if IS_CB[f] then
        redis.call('ZADD', READY, now, f)
        out[#out + 1] = f
    elseif redis.call('GETBIT', DONE, tonumber(f)) == 1 then
        redis.call('ZREM', READY, f)
    elseif decision == RELEASE.DISPATCH then
        if mode == MODE.DIRECT then
            redis.call('ZREM', READY, f)
            push(f, now)
        else
            redis.call('ZADD', READY, now, f)
        end
        out[#out + 1] = tonumber(f)
    elseif decision == RELEASE.HOLD then
        redis.call('ZREM', READY, f)
        redis.call('SADD', HELD, f)
    else
        redis.call('ZREM', READY, f)
    end
end
settle(state)
out[3] = redis.call('ZCARD', READY)
return out
