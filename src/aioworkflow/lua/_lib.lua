-- _lib.lua: helpers shared by every aioworkflow script. The loader joins _machine.lua (the
-- state machine as data, rendered from _machine.py: S states, T[op][state] transitions,
-- ON_RELEASE, CLAIM/SUBMIT/OUT reply codes, CB callbacks, MODE, EVENT codes, F meta fields), this
-- file and the script into one source; the store maps error lines back to these files.
--
-- KEYS (every script receives the same 14 workflow keys, then any queue keys; _keys.py):
--   1 meta    hash    F.*: state, format, total, succeeded, failed_count, mode (MODE),
--                     retention_ms, seq, timestamps, failure details, callbacks, audit
--   2 cnt     string  u32 big-endian per vertex: predecessors still to finish
--   3 off     string  u32 big-endian per vertex + 1: CSR offsets into succ
--   4 succ    string  u32 big-endian per edge: successor vertex indices
--   5 done    bitmap  bit per vertex: completion counted (the exactly-once guard)
--   6 tpl     hash    node -> "slot:delay:" .. message template (direct mode); CB.* callbacks
--   7 ready   zset    released but not yet claimed (ready mode), score = release ms
--   8 held    set     released while PAUSED or FAILED, released again by resume/retry
--   9 res     hash    node -> result blob, only for nodes whose result is needed
--  10 ev      stream  node and workflow events (EVENT_FIELD fields, EVENT codes)
--  11 claims  hash    node -> message id of the delivery that started it
--  12 failed  set     failed nodes (cleared by retry)
--  13 dag     string  the encoded DAG (never read by Lua; listed so PEXPIRE covers it)
--  14 st      stream  workflow state changes only (what waiters block on)
--  15..      pairs    dramatiq queue list key, queue .msgs hash key, one pair per queue slot
-- ARGV[1] is always the workflow id.
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
    return m[1], m[3], m[4], m[5]
end

-- Render a stored template and append it to its dramatiq queue, as RedisBroker.enqueue
-- would: HSET <queue>.msgs id payload, RPUSH <queue> id. Every push gets a fresh id.
local function push(field, now)
    local t = redis.call('HGET', TPL, field)
    if not t then return false end
    local slot, delay, body = string.match(t, '^(%d+):(%d+):(.*)$')
    local id = WF .. '.' .. field .. '.' .. redis.call('HINCRBY', META, F.seq, 1)
    local payload = string.gsub(body, '%z(%u)', {
        I = id, T = tostring(now), E = tostring(now + tonumber(delay))})
    local base = NKEYS + 2 * tonumber(slot)
    redis.call('HSET', KEYS[base + 2], id, payload)
    redis.call('RPUSH', KEYS[base + 1], id)
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

-- Count vertex v0 as finished for each of its successors; release each task node whose
-- counter reaches zero, and cascade through join vertices (which finish when they reach 0).
local function cascade(v0, ntasks, state, mode, now, out)
    local stack = {v0}
    while #stack > 0 do
        local v = table.remove(stack)
        local o = redis.call('GETRANGE', OFF, v * 4, v * 4 + 7)
        local a = struct.unpack('>I4', o, 1)
        local b = struct.unpack('>I4', o, 5)
        local s = ''
        if b > a then s = redis.call('GETRANGE', SUCC, a * 4, b * 4 - 1) end
        local n, i = b - a, 0
        while i < n do
            local chunk = math.min(n - i, 400)
            local ops, ws = {}, {}
            for j = 1, chunk do
                local w = struct.unpack('>I4', s, (i + j - 1) * 4 + 1)
                ws[j] = w
                ops[#ops + 1] = 'INCRBY'
                ops[#ops + 1] = 'u32'
                ops[#ops + 1] = '#' .. w
                ops[#ops + 1] = -1
            end
            local counts = redis.call('BITFIELD', CNT, unpack(ops))
            for j = 1, chunk do
                if counts[j] == 0 then
                    local w = ws[j]
                    if w >= ntasks then
                        redis.call('SETBIT', DONE, w, 1)
                        stack[#stack + 1] = w
                    else
                        release(w, state, mode, now, out)
                    end
                end
            end
            i = i + chunk
        end
    end
end

-- Once a workflow has ended (FINAL), every key expires F.retention_ms later; re-applied after
-- each write in a final state so that keys created late are covered too.
local function settle(state)
    if FINAL[state] then
        local ret = tonumber(redis.call('HGET', META, F.retention_ms)) or 86400000
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
