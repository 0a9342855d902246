-- complete.lua: a node's task succeeded. In one atomic step: count it once (done bit), store
-- its result if needed, decrement its successors' counters, cascade through join vertices,
-- release what reached zero, and after the last node apply T.finish (on_success dispatched).
-- Everything is read and checked first (plan_cascade, templates); a missing key applies
-- T.lose instead and nothing else is written.
-- KEYS: the 14 workflow keys (see _lib.lua), then queue key triples (direct mode)
--       then, to ack the RedisBroker delivery here too: its ack set, its queue's .msgs hash,
--       the heartbeats zset (the last three keys)
-- ARGV: workflow id, node index, result blob, "1" to store the result else "0", message token
--       ("" for none), then (with the ack keys) the redis message id, the broker id, the time
--       in ms
-- Reply: {outcome, state, callback, released...}
--   outcome OUT.APPLIED: counted; OUT.UNCHANGED: already counted (duplicate), nothing changed;
--   OUT.MISSING: no workflow; {OUT.REJECTED, state, '', why}: not a delivery of this
--   submission (a REJECT reason), nothing changed; {OUT.LOST, state, callback, key}:
--   a key is missing, T.lose applied
--   callback: CB.SUCCESS when on_success was dispatched by this call, else ""
--   released: nodes released by this call (ready mode: the caller enqueues them)
-- The ack is the delivery's, not the workflow's: it is done whatever the outcome, last.
local ack_time = ARGV[8] and tonumber(ARGV[8])
if ARGV[6] and not ack_time then return redis.error_reply('ERR complete.lua: bad ack time') end

local function count()
    local state, mode, total, mtok, succeeded = load_meta(F.mode, F.total, F.msg_token, F.succeeded)
    if not state then return {OUT.MISSING, '', ''} end
    if not token_ok(mtok, ARGV[5]) then return {OUT.REJECTED, state, '', REJECT.TOKEN} end
    local node = ARGV[2]
    local v = task_node(node, total)
    if not v then return {OUT.REJECTED, state, '', REJECT.NODE} end
    if ARGV[4] ~= '0' and ARGV[4] ~= '1' then return {OUT.REJECTED, state, '', REJECT.ARGS} end
    if redis.call('GETBIT', DONE, v) == 1 then return {OUT.UNCHANGED, state, ''} end
    total = tonumber(total)
    local missing = nil
    if state ~= S.PENDING then missing = missing_key(total, succeeded) end
    local p = nil
    if not missing and state ~= S.CANCELLED then p, missing = plan_cascade(v, total) end
    local to = T.finish[state]
    local finishing = to and not missing and (tonumber(succeeded) or 0) + 1 == total
    local cb = finishing and redis.call('HEXISTS', META, CB_FIELD[CB.SUCCESS]) == 1
    if not missing and mode == MODE.DIRECT then
        local fields = {}
        if p and ON_RELEASE[state] == RELEASE.DISPATCH then fields = p.releases end
        -- on_success first, then the releases (two calls: no unpack of a wide release list)
        if cb then missing = missing_template(mode, {CB.SUCCESS}) end
        if not missing then missing = missing_template(mode, fields) end
    end
    if missing then
        local after, lost_cb = lose(state, mode, node, missing)
        return {OUT.LOST, after, lost_cb, missing}
    end
    local now = now_ms()
    redis.call('SETBIT', DONE, v, 1)
    redis.call('HDEL', CLAIMS, node)
    if redis.call('SREM', FAILED, node) == 1 then
        redis.call('HINCRBY', META, F.failed_count, -1)
    end
    if ARGV[4] == '1' then redis.call('HSET', RES, node, ARGV[3]) end
    redis.call('HINCRBY', META, F.succeeded, 1)
    event(EVENT.NODE_SUCCEEDED, v, state)
    -- a done node is never pushed again (retry re-runs only nodes not done): free its template
    if mode == MODE.DIRECT then redis.call('HDEL', TPL, node) end
    -- the reply, with released nodes appended (no unpack: no stack limit)
    local out = {OUT.APPLIED, state, ''}
    if p then apply_cascade(p, state, mode, now, out) end
    if finishing then
        state = to
        set_state(state, now)
        redis.call('HSET', META, F.finished, now)
        if cb then
            dispatch(CB.SUCCESS, mode, now, {})
            out[3] = CB.SUCCESS
        end
    end
    settle(state)
    out[2] = state
    return out
end

local reply = count()
if ARGV[6] then
    -- dramatiq's "ack" command, done here so that a success costs no separate ack round trip
    -- (the worker then skips its own); the heartbeat is what dramatiq's dispatch also beats
    local n = #KEYS
    if redis.call('SREM', KEYS[n - 2], ARGV[6]) == 1 then redis.call('HDEL', KEYS[n - 1], ARGV[6]) end
    redis.call('ZADD', KEYS[n], ack_time, ARGV[7])
end
return reply
