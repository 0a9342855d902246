-- _machine.lua: GENERATED from src/aioworkflow/_machine.py by
-- `python -m aioworkflow._machine_render`; do not edit (--check fails on drift).
-- The state machine as data; the loader puts this chunk before _lib.lua and each script.
-- workflow states
local S = {
    PENDING = 'PENDING',
    RUNNING = 'RUNNING',
    PAUSED = 'PAUSED',
    SUCCEEDED = 'SUCCEEDED',
    FAILED = 'FAILED',
    CANCELLED = 'CANCELLED',
}
-- T[op][state]: the state after op; nil: op does not apply in that state
local T = {
    start = {PENDING = 'RUNNING'},
    finish = {PENDING = 'SUCCEEDED', RUNNING = 'SUCCEEDED', PAUSED = 'SUCCEEDED', FAILED = 'SUCCEEDED'},
    fail = {RUNNING = 'FAILED', PAUSED = 'FAILED'},
    pause = {RUNNING = 'PAUSED'},
    resume = {PAUSED = 'RUNNING'},
    retry = {FAILED = 'RUNNING'},
    cancel = {PENDING = 'CANCELLED', RUNNING = 'CANCELLED', PAUSED = 'CANCELLED', FAILED = 'CANCELLED'},
    lose = {PENDING = 'FAILED', RUNNING = 'FAILED', PAUSED = 'FAILED'},
}
-- final states
local FINAL = {SUCCEEDED = true, FAILED = true, CANCELLED = true}
-- release decisions
local RELEASE = {DISPATCH = 'dispatch', HOLD = 'hold', DROP = 'drop'}
-- release decision by state (nil: RELEASE.DROP)
local ON_RELEASE = {RUNNING = 'dispatch', PAUSED = 'hold', FAILED = 'hold'}
-- claim.lua codes
local CLAIM = {
    RUN = 0,
    DONE = 1,
    ENDED = 2,
    HELD = 3,
    DUPLICATE = 4,
    UNRELEASED = 5,
    REJECTED = 6,
    LOST = 7,
    MISSING = -1,
}
-- claim answer decided by the state alone
local CLAIM_IN_STATE = {CANCELLED = 2, SUCCEEDED = 2, PAUSED = 3, FAILED = 3}
-- submit.lua codes
local SUBMIT = {TAKEN = 0, CLAIMED = 1, CLAIMED_BEFORE = 2}
-- reply outcomes
local OUT = {APPLIED = 1, UNCHANGED = 0, MISSING = -1, REJECTED = -2, LOST = -3}
-- rejection reasons
local REJECT = {TOKEN = 'wrong_token', NODE = 'bad_node', ARGS = 'bad_args'}
-- callback kinds (wire)
local CB = {SUCCESS = 's', FAILURE = 'f'}
-- is this node key a callback?
local IS_CB = {s = true, f = true}
-- meta field of each callback's message
local CB_FIELD = {s = 'cb_s', f = 'cb_f'}
-- dispatch modes (stored)
local MODE = {DIRECT = 'd', READY = 'r'}
-- event codes (stored)
local EVENT = {
    NODE_SUCCEEDED = 'ok',
    NODE_FAILED = 'fail',
    STATE = 'state',
    NODE_RELEASED = 'rel',
    NODE_STARTED = 'start',
    NODE_PROGRESS = 'prog',
}
-- event stream entry fields
local EVENT_FIELD = {
    kind = 'k',
    node = 'n',
    state = 's',
    attempt = 'a',
    done = 'd',
    total = 't',
    note = 'm',
}
-- meta hash fields
local F = {
    state = 'state',
    format = 'format',
    token = 'token',
    msg_token = 'mtok',
    total = 'total',
    succeeded = 'succeeded',
    failed_count = 'failed_count',
    seq = 'seq',
    mode = 'mode',
    retention_ms = 'retention_ms',
    failed_retention_ms = 'failed_retention_ms',
    roots_released = 'roots_released',
    slots = 'slots',
    audit = 'audit',
    created = 'created',
    started = 'started',
    finished = 'finished',
    updated = 'updated',
    failed_node = 'failed_node',
    failed_actor = 'failed_actor',
    exc_type = 'exc_type',
    exc_message = 'exc_message',
    on_success = 'cb_s',
    on_failure = 'cb_f',
    trace = 'traceparent',
    name = 'name',
    labels = 'labels',
}
-- the stored format this version writes
local FORMAT = 2
-- exception type of a workflow failed by T.lose; hex digits of a message token
local STATE_LOST = 'StateLost'
local MSG_TOKEN_CHARS = 16
-- 0.1.0 names of renamed meta fields {old, new}, and fields no longer written
local LEGACY = {
    {'ok', 'succeeded'},
    {'nf', 'failed_count'},
    {'ret', 'retention_ms'},
    {'rs', 'roots_released'},
    {'tok', 'token'},
    {'fnode', 'failed_node'},
    {'factor', 'failed_actor'},
    {'fexc', 'exc_type'},
    {'fmsg', 'exc_message'},
}
local DROPPED = {'nv'}
