-- reconcile.lua: find released entries nobody claimed for `age` ms (their enqueue was lost:
-- a worker died between this store and the broker) and hand them out again. Each returned
-- entry's timestamp is bumped, so concurrent reconcilers do not both re-enqueue it; a
-- duplicate that still gets through is skipped by claim.lua. What becomes of a stale node
-- follows ON_RELEASE, as for a fresh release.
-- KEYS: the 14 workflow keys (see _lib.lua), then queue key triples (direct mode)
-- ARGV: workflow id, age in ms, max entries
-- Reply: {outcome, state, remaining ready entries, entries to enqueue...}
--   outcome OUT.APPLIED: ok; OUT.MISSING: no such workflow (the caller drops it from the
--   active index); {OUT.LOST, state, 0, key, callback?}: a key or a template to push is
--   missing (direct mode): T.lose applied, nothing else written
local age, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
if not age or not limit then return redis.error_reply('ERR reconcile.lua: bad age or limit') end
local state, mode, total, succeeded = load_meta(F.mode, F.total, F.succeeded)
if not state then return {OUT.MISSING, '', 0} end
local now = now_ms()
local stale = redis.call('ZRANGEBYSCORE', READY, '-inf', now - age, 'LIMIT', 0, limit)
local out = {OUT.APPLIED, state, 0}
local decision = ON_RELEASE[state]
-- read and check before writing: in direct mode the nodes to push need their templates
if decision == RELEASE.DISPATCH and mode == MODE.DIRECT and #stale > 0 then
    local nodes = {}
    for _, f in ipairs(stale) do
        local v = task_node(f, total)
        if v and redis.call('GETBIT', DONE, v) == 0 then nodes[#nodes + 1] = v end
    end
    local missing = missing_key(total, succeeded) or missing_template(mode, nodes)
    if missing then
        local after, cb = lose(state, mode, '', missing)
        return {OUT.LOST, after, 0, missing, cb}
    end
end
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
