-- fail.lua: dramatiq gave up on a node (retries exhausted, throws, age limit, unknown actor).
-- In one atomic step: record the failure, apply T.fail (RUNNING | PAUSED -> FAILED: nothing new
-- is released from then on), record which node failed and why, and dispatch on_failure once.
-- Everything is read and checked before the first write; a missing key applies T.lose instead.
-- KEYS: the 14 workflow keys (see _lib.lua), then queue key triples (direct mode)
-- ARGV: workflow id, node index, actor name, exception type, exception message, message token
--       ("" for none)
-- Reply: {outcome, state, callback}
--   outcome OUT.APPLIED: recorded; OUT.UNCHANGED: node already done or already failed;
--   OUT.MISSING: no workflow; {OUT.REJECTED, state, '', why}: not a delivery of this
--   submission (a REJECT reason), nothing changed; {OUT.LOST, state, callback, key}: a key is
--   missing, T.lose applied
--   callback: CB.FAILURE when on_failure was dispatched by this call, else ""
local state, mode, total, mtok, succeeded = load_meta(F.mode, F.total, F.msg_token, F.succeeded)
if not state then return {OUT.MISSING, '', ''} end
if not token_ok(mtok, ARGV[6]) then return {OUT.REJECTED, state, '', REJECT.TOKEN} end
local node = ARGV[2]
local v = task_node(node, total)
if not v then return {OUT.REJECTED, state, '', REJECT.NODE} end
if redis.call('GETBIT', DONE, v) == 1 then return {OUT.UNCHANGED, state, ''} end
local to = T.fail[state]
local has_cb = to and redis.call('HEXISTS', META, CB_FIELD[CB.FAILURE]) == 1
local missing = nil
if state ~= S.PENDING then missing = missing_key(total, succeeded) end
if not missing and has_cb then missing = missing_template(mode, {CB.FAILURE}) end
if missing then
    local after, cb = lose(state, mode, node, missing)
    return {OUT.LOST, after, cb, missing}
end
redis.call('HDEL', CLAIMS, node)
if redis.call('SADD', FAILED, node) == 0 then return {OUT.UNCHANGED, state, ''} end
local now = now_ms()
redis.call('HINCRBY', META, F.failed_count, 1)
event(EVENT.NODE_FAILED, v, state)
local cb = ''
if to then
    state = to
    set_state(state, now)
    redis.call('HSET', META, F.finished, now, F.failed_node, node, F.failed_actor, ARGV[3],
        F.exc_type, ARGV[4], F.exc_message, ARGV[5])
    if has_cb then
        dispatch(CB.FAILURE, mode, now, {})
        cb = CB.FAILURE
    end
end
settle(state)
return {OUT.APPLIED, state, cb}
