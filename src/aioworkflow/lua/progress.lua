-- progress.lua: a running node reports its progress (aioworkflow.report_progress).
-- KEYS: the 14 workflow keys (see _lib.lua)
-- ARGV: workflow id, node index, message id of the delivery, message token, done, total ("":
--       none), note ("": none)
-- Reply: 1 when logged as an EVENT.NODE_PROGRESS entry, 0 when not: no such workflow (ended
--   and expired), a wrong token or node, or the node is not claimed by this delivery any more
--   (it completed, or another delivery holds it). A progress report never changes the state.
local state, total, mtok = load_meta(F.total, F.msg_token)
if not state then return 0 end
if not token_ok(mtok, ARGV[4]) then return 0 end
local v = task_node(ARGV[2], total)
if not v then return 0 end
if redis.call('HGET', CLAIMS, ARGV[2]) ~= ARGV[3] then return 0 end
local entry = {EVENT_FIELD.kind, EVENT.NODE_PROGRESS, EVENT_FIELD.node, v,
    EVENT_FIELD.state, state, EVENT_FIELD.done, ARGV[5]}
if ARGV[6] ~= '' then
    entry[#entry + 1] = EVENT_FIELD.total
    entry[#entry + 1] = ARGV[6]
end
if ARGV[7] ~= '' then
    entry[#entry + 1] = EVENT_FIELD.note
    entry[#entry + 1] = ARGV[7]
end
redis.call('XADD', EV, 'MAXLEN', '~', EV_MAXLEN, '*', unpack(entry))
return 1
