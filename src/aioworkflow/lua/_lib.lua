-- _lib.lua: helpers shared by every aioworkflow script. The loader joins _machine.lua (the
-- state machine as data, rendered from _machine.py: S states, T[op][state] transitions,
-- ON_RELEASE, CLAIM/SUBMIT/OUT reply codes, CB callbacks, MODE, EVENT codes, F meta fields), this
-- file and the script into one source; the store maps error lines back to these files.
--
-- KEYS (every script receives the same 14 workflow keys, then any queue keys; _keys.py):
--   1 meta    hash    F.*: state, format, total, succeeded, failed_count, mode (MODE),
--                     retention_ms, failed_retention_ms, msg_token (checked against every
--                     delivery's token; absent before tokens), seq, timestamps, failure
--                     details, callbacks, audit
--   2 cnt     string  u32 big-endian per vertex: predecessors still to finish
--   3 off     string  u32 big-endian per vertex + 1: CSR offsets into succ
--   4 succ    string  u32 big-endian per edge: successor vertex indices
--   5 done    bitmap  bit per vertex: completion counted (the exactly-once guard)
--   6 tpl     hash    node -> "slot:delay:" .. message template (direct mode); CB.* callbacks
--   7 ready   zset    released but not yet claimed (ready mode), score = release ms
--   8 held    set     released while PAUSED or FAILED, released again by resume/retry
--   9 res     hash    node -> result blob, only for nodes whose result is needed
--  10 ev      stream  node and workflow events (EVENT_FIELD fields, EVENT codes)
--  11 claims  hash    node -> claim key (push id) of the delivery that started it
--  12 failed  set     failed nodes (cleared by retry)
--  13 dag     string  the encoded DAG (never read by Lua; listed so PEXPIRE covers it)
--  14 st      stream  workflow state changes only (what waiters block on)
--  15..      triples  dramatiq queue list key, queue .msgs hash key, queue .bell list (the
--                     doorbell idle consumers wait on: _dramatiq/_bell.py), one per queue slot
-- ARGV[1] is always the workflow id.
-- No partial effects: Redis does not roll back a script that errors half-way, so every script
-- validates its arguments (task_node, token_ok) and reads what it needs (missing_key,
-- plan_cascade, missing_template) before its first write. A key of a live workflow found
-- missing (evicted) applies T.lose (lose) and nothing else.
-- All keys of a workflow share one hash tag, so each call touches one cluster slot; the
-- dramatiq queue keys are passed (direct mode only) on standalone Redis.
local META, CNT, OFF, SUCC, DONE, TPL, READY, HELD, RES, EV, CLAIMS, FAILED, DAG, ST =
    KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10],
    KEYS[11], KEYS[12], KEYS[13], KEYS[14]
local NKEYS = 14
local WF = ARGV[1]
local EV_MAXLEN = 10000

local function now_ms()
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function event(kind, node, state)
    redis.call('XADD', EV, 'MAXLEN', '~', EV_MAXLEN, '*',
        EVENT_FIELD.kind, kind, EVENT_FIELD.node, node, EVENT_FIELD.state, state)
end

-- A meta hash written by aioworkflow 0.1.0 has no F.format and short field names (LEGACY):
-- rename them in place, once per workflow, so that the scripts only know the new names.
local function upgrade_meta()
    local old = {}
    for i, pair in ipairs(LEGACY) do old[i] = pair[1] end
    local values = redis.call('HMGET', META, unpack(old))
    local set = {F.format, FORMAT}
    for i, pair in ipairs(LEGACY) do
        if values[i] then
            set[#set + 1] = pair[2]
            set[#set + 1] = values[i]
        end
    end
    redis.call('HSET', META, unpack(set))
    for _, name in ipairs(DROPPED) do old[#old + 1] = name end
    redis.call('HDEL', META, unpack(old))
end

-- The workflow's state (false: no such workflow), then the meta fields named in `...`, all in
-- one HMGET. Every script starts here, so an old meta hash is upgraded before anything reads it;
-- a current one costs nothing extra.
local function load_meta(...)
    local m = redis.call('HMGET', META, F.state, F.format, ...)
    if m[1] and not m[2] then
        upgrade_meta()
        m = redis.call('HMGET', META, F.state, F.format, ...)
    end
    return m[1], unpack(m, 3, 2 + select('#', ...))
end

-- A task node index as a worker sends it: the decimal digits of an integer 0 <= n < total (no
-- sign, leading zero, fraction or exponent: "1.0", "1e6" and "-1" are not nodes). The number,
-- or nil for anything else (a forged or corrupt delivery).
local function task_node(node, total)
    if type(node) ~= 'string' or #node > 10 then return nil end
    if node ~= '0' and not string.match(node, '^[1-9]%d*$') then return nil end
    local v, t = tonumber(node), tonumber(total)
    if not t or v >= t then return nil end
    return v
end

-- Whether a delivery belongs to this submission: its token (ARGV, "" for none) equals the
-- meta's F.msg_token. A workflow stored before tokens existed has none, and neither have its
-- messages; a message of an earlier workflow that had the same id never matches.
local function token_ok(mtok, tok)
    return (mtok or '') == tok
end

-- The first key (its name) of a live workflow's structure that is missing, or nil. cnt, off
-- and dag exist from submit on when there are tasks, done once a node has succeeded; a missing
-- one was evicted (maxmemory-policy other than noeviction) or deleted by hand.
local function missing_key(total, succeeded)
    local t, n = tonumber(total), tonumber(succeeded)
    if not t then return META .. ' ' .. F.total end
    if not n then return META .. ' ' .. F.succeeded end
    -- the common case in one call: every key there
    if t > 0 then
        local present, want = 0, 4
        if n > 0 then
            present, want = redis.call('EXISTS', CNT, OFF, DAG, SUCC, DONE), 5
        else
            present = redis.call('EXISTS', CNT, OFF, DAG, SUCC)
        end
        if present == want then return nil end
    end
    if t > 0 then
        for _, key in ipairs({CNT, OFF, DAG}) do
            if redis.call('EXISTS', key) == 0 then return key end
        end
        -- off ends with the edge count: succ exists iff there are edges
        local last = redis.call('GETRANGE', OFF, -4, -1)
        if #last ~= 4 then return OFF end
        if struct.unpack('>I4', last, 1) > 0 and redis.call('EXISTS', SUCC) == 0 then
            return SUCC
        end
    end
    if n > 0 and redis.call('EXISTS', DONE) == 0 then return DONE end
    return nil
end

-- In direct mode, the first of `fields` (task nodes or CB kinds) without a stored template (a
-- push would silently send nothing), or nil. Read before any write.
local function missing_template(mode, fields)
    if mode ~= MODE.DIRECT then return nil end
    local i = 1
    while i <= #fields do
        local chunk = {}
        for j = i, math.min(#fields, i + 399) do chunk[#chunk + 1] = tostring(fields[j]) end
        local got = redis.call('HMGET', TPL, unpack(chunk))
        for j = 1, #chunk do
            if not got[j] then return TPL .. ' ' .. chunk[j] end
        end
        i = i + 400
    end
    return nil
end

-- A string as the inside of a JSON string literal: quote, backslash and control characters
-- escaped (any byte >= 0x20 passes as is: ids are UTF-8). Workflow ids may contain any of
-- them, and a message id starts with the workflow id.
local JSON_ESC = {['"'] = '\\"', ['\\'] = '\\\\'}
local function json_escape(s)
    return (string.gsub(s, '[%c"\\]', function(c)
        return JSON_ESC[c] or string.format('\\u%04x', string.byte(c))
    end))
end

-- The prefix of the message ids this workflow's pushes get: its message token (random per
-- submission, so ids never collide across workflows, and short: a message's size does not
-- depend on the workflow id's length), or the workflow id for a workflow stored before tokens.
local ID_PREFIX = nil
local function id_prefix()
    if ID_PREFIX == nil then ID_PREFIX = redis.call('HGET', META, F.msg_token) or WF end
    return ID_PREFIX
end

-- Rings per queue slot in this script: at most BELL_DEPTH, the bell trimmed to that length (a
-- bulk release wakes up to BELL_DEPTH waiting worker processes; unheard rings stay bounded).
local BELL_DEPTH = 8
local RUNG = {}
local function ring(i)
    local n = RUNG[i] or 0
    if n >= BELL_DEPTH then return end
    RUNG[i] = n + 1
    redis.call('LPUSH', KEYS[i], '1')
    redis.call('LTRIM', KEYS[i], 0, BELL_DEPTH - 1)
end

-- Render a stored template and append it to its dramatiq queue, as RedisBroker.enqueue
-- would: HSET <queue>.msgs id payload, RPUSH <queue> id, then ring the queue's bell. Every
-- push gets a fresh id: the redis_message_id and the ref's push id (the claim key); the
-- message_id is in the template.
local function push(field, now)
    local t = redis.call('HGET', TPL, field)
    if not t then return false end
    local slot, delay, body = string.match(t, '^(%d+):(%d+):(.*)$')
    local id = id_prefix() .. '.' .. field .. '.' .. redis.call('HINCRBY', META, F.seq, 1)
    local payload = string.gsub(body, '%z(%u)', {
        I = json_escape(id), T = tostring(now), E = tostring(now + tonumber(delay))})
    local base = NKEYS + 3 * tonumber(slot)
    redis.call('HSET', KEYS[base + 2], id, payload)
    redis.call('RPUSH', KEYS[base + 1], id)
    ring(base + 3)
    return true
end

-- With F.audit = 1 every release is also logged as an EVENT.NODE_RELEASED event (tests, debugging).
local AUDIT = nil
local function audited()
    if AUDIT == nil then AUDIT = redis.call('HGET', META, F.audit) == '1' end
    return AUDIT
end

-- Hand a released node (or a CB callback) to the broker: straight into dramatiq's queue in
-- direct mode, else into the ready set for the worker to enqueue (and the reconciler to find if
-- the worker dies first).
local function dispatch(field, mode, now, out)
    if mode == MODE.DIRECT then
        push(tostring(field), now)
    else
        redis.call('ZADD', READY, now, field)
    end
    if type(field) == 'number' and audited() then
        event(EVENT.NODE_RELEASED, field, redis.call('HGET', META, F.state))
    end
    out[#out + 1] = field
end

-- A node whose predecessors have all finished: dispatched, held or dropped (ON_RELEASE).
local function release(w, state, mode, now, out)
    local decision = ON_RELEASE[state]
    if decision == RELEASE.DISPATCH then
        dispatch(w, mode, now, out)
    elseif decision == RELEASE.HOLD then
        redis.call('SADD', HELD, w)
    end
end

-- The read half of counting vertex v0 as finished (no writes): walk its successors, and
-- through join vertices (which finish when their counter reaches 0), with the counters as
-- they would be after the decrements. Returns the plan {order, dec, joins, releases} (task
-- nodes whose counter reaches zero, in release order), or nil and the name of the key that is
-- missing or too short (evicted state: nothing may be written).
local function plan_cascade(v0, ntasks)
    local p = {order = {}, dec = {}, joins = {}, releases = {}}
    local stack = {v0}
    while #stack > 0 do
        local v = table.remove(stack)
        local o = redis.call('GETRANGE', OFF, v * 4, v * 4 + 7)
        if #o ~= 8 then return nil, OFF end
        local a = struct.unpack('>I4', o, 1)
        local b = struct.unpack('>I4', o, 5)
        local s = ''
        if b > a then
            s = redis.call('GETRANGE', SUCC, a * 4, b * 4 - 1)
            if #s ~= (b - a) * 4 then return nil, SUCC end
        end
        local n, i = b - a, 0
        while i < n do
            local chunk = math.min(n - i, 400)
            local ops, ws = {}, {}
            for j = 1, chunk do
                local w = struct.unpack('>I4', s, (i + j - 1) * 4 + 1)
                ws[j] = w
                ops[#ops + 1] = 'GET'
                ops[#ops + 1] = 'u32'
                ops[#ops + 1] = '#' .. w
            end
            local counts = redis.call('BITFIELD', CNT, unpack(ops))
            for j = 1, chunk do
                local w = ws[j]
                if not p.dec[w] then
                    p.dec[w] = 0
                    p.order[#p.order + 1] = w
                end
                p.dec[w] = p.dec[w] + 1
                local left = counts[j] - p.dec[w]
                if left < 0 then return nil, CNT end
                if left == 0 then
                    if w >= ntasks then
                        p.joins[#p.joins + 1] = w
                        stack[#stack + 1] = w
                    else
                        p.releases[#p.releases + 1] = w
                    end
                end
            end
            i = i + chunk
        end
    end
    return p
end

-- The write half: apply the decrements, mark the finished joins done, release the nodes.
local function apply_cascade(p, state, mode, now, out)
    local i = 1
    while i <= #p.order do
        local ops = {}
        for j = i, math.min(#p.order, i + 399) do
            local w = p.order[j]
            ops[#ops + 1] = 'INCRBY'
            ops[#ops + 1] = 'u32'
            ops[#ops + 1] = '#' .. w
            ops[#ops + 1] = -p.dec[w]
        end
        redis.call('BITFIELD', CNT, unpack(ops))
        i = i + 400
    end
    for _, w in ipairs(p.joins) do redis.call('SETBIT', DONE, w, 1) end
    for _, w in ipairs(p.releases) do release(w, state, mode, now, out) end
end

-- Once a workflow has ended (FINAL), every key expires F.retention_ms later; re-applied after
-- each write in a final state so that keys created late are covered too.
-- A FAILED workflow uses F.failed_retention_ms when it has one (it stays retryable longer).
local function settle(state)
    if FINAL[state] then
        local ret = tonumber(redis.call('HGET', META, F.retention_ms)) or 86400000
        if state == S.FAILED then
            ret = tonumber(redis.call('HGET', META, F.failed_retention_ms)) or ret
        end
        for i = 1, NKEYS do redis.call('PEXPIRE', KEYS[i], ret) end
    end
end

local function persist()
    for i = 1, NKEYS do redis.call('PERSIST', KEYS[i]) end
end

local function set_state(state, now)
    redis.call('HSET', META, F.state, state, F.updated, now)
    event(EVENT.STATE, -1, state)
    redis.call('XADD', ST, 'MAXLEN', '~', 100, '*', EVENT_FIELD.state, state)
end

-- T.lose: a key of this live workflow is missing (`what` names it). Nothing else is written:
-- the workflow fails with exc type STATE_LOST (no actor), on_failure dispatched once when it
-- can be (in direct mode its template may be gone too). Returns the state after, and the
-- callback dispatched ("" for none).
local function lose(state, mode, node, what)
    local to = T.lose[state]
    if not to then return state, '' end
    local now = now_ms()
    local cb = ''
    local has_cb = redis.call('HEXISTS', META, CB_FIELD[CB.FAILURE]) == 1
        and not missing_template(mode, {CB.FAILURE})
    set_state(to, now)
    redis.call('HSET', META, F.finished, now, F.failed_node, node, F.failed_actor, '',
        F.exc_type, STATE_LOST, F.exc_message, 'workflow state lost: key ' .. what
        .. ' is missing (evicted? the store needs maxmemory-policy noeviction)')
    if has_cb then
        dispatch(CB.FAILURE, mode, now, {})
        cb = CB.FAILURE
    end
    settle(to)
    return to, cb
end
