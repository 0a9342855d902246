-- start.lua: apply T.start (PENDING -> RUNNING) to a stored workflow and release its roots; a
-- workflow without tasks takes T.finish at once (SUCCEEDED, on_success dispatched).
-- Big root sets are released in several calls: the first with phase "first", the rest "more".
-- Each call names the offset of its chunk in the root list; F.roots_released counts the roots
-- released so far, so a chunk sent again (a retried run()) releases nothing twice.
-- KEYS: the 14 workflow keys (see _lib.lua), then queue key triples (direct mode)
-- ARGV: workflow id, phase ("first" | "more"), chunk offset, root node indices...
-- Reply: {outcome, state, released...}
--   OUT.APPLIED: done; OUT.UNCHANGED: nothing changed (not PENDING on "first", chunk already
--   released on "more"); OUT.MISSING: no workflow
local state, mode, total, roots_released = load_meta(F.mode, F.total, F.roots_released)
if not state then return {OUT.MISSING, ''} end
-- validate every argument before the first write
if (ARGV[2] ~= 'first' and ARGV[2] ~= 'more') or not task_node(ARGV[3], 4294967296)
    or not tonumber(total) then
    return redis.error_reply('ERR start.lua: bad phase, offset or stored total')
end
for i = 4, #ARGV do
    if not task_node(ARGV[i], total) then
        return redis.error_reply('ERR start.lua: ' .. ARGV[i] .. ' is not a root node index')
    end
end
local now = now_ms()
local out = {OUT.APPLIED, state}
if ARGV[2] == 'first' then
    local to = T.start[state]
    if not to then return {OUT.UNCHANGED, state} end
    persist()
    redis.call('HSET', META, F.started, now)
    if tonumber(total) == 0 then
        state = T.finish[state]
        set_state(state, now)
        redis.call('HSET', META, F.finished, now)
        if redis.call('HEXISTS', META, CB_FIELD[CB.SUCCESS]) == 1 then
            dispatch(CB.SUCCESS, mode, now, out)
        end
        settle(state)
        out[2] = state
        return out
    end
    state = to
    set_state(state, now)
elseif tonumber(ARGV[3]) < (tonumber(roots_released) or 0) then
    return {OUT.UNCHANGED, state}
end
out[2] = state
for i = 4, #ARGV do
    release(tonumber(ARGV[i]), state, mode, now, out)
end
redis.call('HSET', META, F.roots_released, tonumber(ARGV[3]) + #ARGV - 3)
settle(state)
return out
