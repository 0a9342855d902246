-- _lib.lua: helpers shared by every aioworkflow script; the loader prepends this file to each
-- script, so every script sees the same key layout and helpers.
--
-- KEYS (every script receives the same 14 workflow keys, then any queue keys):
--   1 meta    hash    state, total, nv (vertices), ok, nf, mode (d|r), ret, seq, timestamps,
--                     failure details, cb_s/cb_f (callback messages), audit (log releases)
--   2 cnt     string  u32 big-endian per vertex: predecessors still to finish
--   3 off     string  u32 big-endian per vertex + 1: CSR offsets into succ
--   4 succ    string  u32 big-endian per edge: successor vertex indices
--   5 done    bitmap  bit per vertex: completion counted (the exactly-once guard)
--   6 tpl     hash    node -> "slot:delay:" .. message template (direct mode); "s"/"f" callbacks
--   7 ready   zset    released but not yet claimed (ready mode), score = release ms
--   8 held    set     released while PAUSED or FAILED, released again by resume/retry
--   9 res     hash    node -> result blob, only for nodes whose result is needed
--  10 ev      stream  node and workflow events
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
local TERMINAL = {SUCCEEDED = true, FAILED = true, CANCELLED = true}

local function now_ms()
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function event(kind, node, state)
    redis.call('XADD', EV, 'MAXLEN', '~', EV_MAXLEN, '*', 'k', kind, 'n', node, 's', state)
end

-- Render a stored template and append it to its dramatiq queue, as RedisBroker.enqueue
-- would: HSET <queue>.msgs id payload, RPUSH <queue> id. Every push gets a fresh id.
local function push(field, now)
    local t = redis.call('HGET', TPL, field)
    if not t then return false end
    local slot, delay, body = string.match(t, '^(%d+):(%d+):(.*)$')
    local id = WF .. '.' .. field .. '.' .. redis.call('HINCRBY', META, 'seq', 1)
    local payload = string.gsub(body, '%z(%u)', {
        I = id, T = tostring(now), E = tostring(now + tonumber(delay))})
    local base = NKEYS + 2 * tonumber(slot)
    redis.call('HSET', KEYS[base + 2], id, payload)
    redis.call('RPUSH', KEYS[base + 1], id)
    return true
end

-- With the meta field audit=1 every release is also logged as a "rel" event (tests, debugging).
local AUDIT = nil
local function audited()
    if AUDIT == nil then AUDIT = redis.call('HGET', META, 'audit') == '1' end
    return AUDIT
end

-- Hand a released node (or callback "s"/"f") to the broker: straight into dramatiq's queue
-- in direct mode, else into the ready set for the worker to enqueue (and the reconciler to
-- find if the worker dies first).
local function dispatch(field, mode, now, out)
    if mode == 'd' then
        push(tostring(field), now)
    else
        redis.call('ZADD', READY, now, field)
    end
    if type(field) == 'number' and audited() then
        event('rel', field, redis.call('HGET', META, 'state'))
    end
    out[#out + 1] = field
end

local function release(w, state, mode, now, out)
    if state == 'RUNNING' then
        dispatch(w, mode, now, out)
    elseif state == 'PAUSED' or state == 'FAILED' then
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

-- Once a workflow has ended, every key expires `ret` ms later; re-applied after each write
-- in a terminal state so that keys created late are covered too.
local function settle(state)
    if TERMINAL[state] then
        local ret = tonumber(redis.call('HGET', META, 'ret')) or 86400000
        for i = 1, NKEYS do redis.call('PEXPIRE', KEYS[i], ret) end
    end
end

local function persist()
    for i = 1, NKEYS do redis.call('PERSIST', KEYS[i]) end
end

local function set_state(state, now)
    redis.call('HSET', META, 'state', state, 'updated', now)
    event('state', -1, state)
    redis.call('XADD', ST, 'MAXLEN', '~', 100, '*', 's', state)
end
