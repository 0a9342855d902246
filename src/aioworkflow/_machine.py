"""The workflow state machine as data: the one place its rules are written. Pure.

Theory of operation
-------------------
A workflow is in one :class:`State`. Operations (:class:`Op`) move it through
:data:`TRANSITIONS`: ``TRANSITIONS[op][state]`` is the state after ``op``, and a state missing
from ``TRANSITIONS[op]`` means the operation does not apply there (it changes nothing and says
so: :attr:`Outcome.UNCHANGED`). What happens to a node released by a barrier depends only on the
state (:data:`ON_RELEASE`), and so does the first answer of a claim (:data:`CLAIM_IN_STATE`).

Three implementations follow these tables and nothing else:

* the Lua scripts, through ``lua/_machine.lua``: a chunk *rendered from this module*
  (``T.pause[state]``, ``CLAIM.HELD``, ``F.failed_actor``, ...), loaded in front of every
  script;
* the MemoryStore (``_store/_memory.py``), which reads the tables directly;
* the prose table in ``_status.py``, rendered from :data:`TRANSITIONS` too.

``python -m aioworkflow._machine_render`` rewrites both rendered texts; ``--check`` fails when
either has drifted from this module (``nox -s lint`` runs it), and ``tests/test_machine.py``
fails when a script spells a state, a meta field, a callback or a reply code as a literal
instead of using the chunk.

Values that leave the process keep their 0.1.0 spelling: the callback kinds ``"s"``/``"f"``
travel in queued messages' options, the modes ``"d"``/``"r"`` and the event codes are stored.
Meta field names were renamed in format 2 (:data:`LEGACY_FIELDS`); the scripts upgrade a 0.1.0
meta hash in place the first time they touch it (see ``docs/upgrading.md``).
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = [
    "CALLBACK_FIELD",
    "CLAIM_IN_STATE",
    "DROPPED_FIELDS",
    "FINAL_STATES",
    "LEGACY_FIELDS",
    "MESSAGE_TOKEN_CHARS",
    "META_FORMAT",
    "ON_RELEASE",
    "STATE_LOST",
    "TRANSITIONS",
    "CallbackKind",
    "ClaimCode",
    "EventCode",
    "MetaField",
    "Mode",
    "Op",
    "Outcome",
    "RejectReason",
    "Release",
    "State",
    "SubmitCode",
    "transition",
]


class State(enum.StrEnum):
    """The state of a workflow."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def is_final(self) -> bool:
        """SUCCEEDED, FAILED or CANCELLED: nothing runs until a ``retry()`` (FAILED only)."""
        return self in FINAL_STATES


class Op(enum.StrEnum):
    """What moves a workflow from one state to another."""

    #: ``run()`` stores the workflow and starts it.
    START = "start"
    #: The last task node succeeds (at start for a workflow without tasks).
    FINISH = "finish"
    #: A node fails for good (dramatiq gave up on it).
    FAIL = "fail"
    PAUSE = "pause"
    RESUME = "resume"
    RETRY = "retry"
    CANCEL = "cancel"
    #: A script found a key of the workflow missing (evicted or deleted): it cannot go on.
    LOSE = "lose"


#: ``TRANSITIONS[op][from] == to``; a ``from`` state missing means ``op`` does not apply there.
TRANSITIONS: Final[dict[Op, dict[State, State]]] = {
    Op.START: {State.PENDING: State.RUNNING},
    # PENDING: a workflow with no tasks succeeds as it starts. FAILED: the failed node (or the
    # last one) may still succeed, e.g. a delivery that was running when the failure was
    # recorded; then every node is done and the workflow has succeeded after all.
    Op.FINISH: {
        State.PENDING: State.SUCCEEDED,
        State.RUNNING: State.SUCCEEDED,
        State.PAUSED: State.SUCCEEDED,
        State.FAILED: State.SUCCEEDED,
    },
    Op.FAIL: {State.RUNNING: State.FAILED, State.PAUSED: State.FAILED},
    Op.PAUSE: {State.RUNNING: State.PAUSED},
    Op.RESUME: {State.PAUSED: State.RUNNING},
    Op.RETRY: {State.FAILED: State.RUNNING},
    Op.CANCEL: {
        State.PENDING: State.CANCELLED,
        State.RUNNING: State.CANCELLED,
        State.PAUSED: State.CANCELLED,
        State.FAILED: State.CANCELLED,
    },
    # A live workflow whose state is partly gone (an evicted key) can neither finish nor be
    # trusted to release the right nodes: it fails with exc type STATE_LOST, never succeeds.
    Op.LOSE: {
        State.PENDING: State.FAILED,
        State.RUNNING: State.FAILED,
        State.PAUSED: State.FAILED,
    },
}

#: What each transition also does (rendered into the prose table).
EFFECTS: Final[dict[Op, str]] = {
    Op.START: "roots released (SUCCEEDED at once if there are no tasks)",
    Op.FINISH: "``on_success`` dispatched once",
    Op.FAIL: "nothing new released, ``on_failure`` dispatched once",
    Op.PAUSE: "released nodes are held",
    Op.RESUME: "held nodes released once",
    Op.RETRY: "failed and held nodes released once, failure details cleared",
    Op.CANCEL: "nothing released any more, queued deliveries skipped",
    Op.LOSE: "a key is missing: nothing written but this, exc type ``StateLost``, "
    "``on_failure`` dispatched once",
}

#: States in which nothing runs (keys expire ``retention_ms`` after reaching one).
FINAL_STATES: Final[frozenset[State]] = frozenset((State.SUCCEEDED, State.FAILED, State.CANCELLED))


def transition(op: Op, state: State) -> State | None:
    """The state after ``op`` in ``state``, or None when ``op`` does not apply there."""
    return TRANSITIONS[op].get(state)


class Release(enum.StrEnum):
    """What becomes of a node whose predecessors have all finished."""

    #: Handed to the broker now (direct: into dramatiq's queue; ready: into the ready set).
    DISPATCH = "dispatch"
    #: Kept in the held set until ``resume()`` / ``retry()``.
    HOLD = "hold"
    #: Dropped: the workflow has ended.
    DROP = "drop"


#: Release decision by state (a state missing here: :attr:`Release.DROP`).
ON_RELEASE: Final[dict[State, Release]] = {
    State.RUNNING: Release.DISPATCH,
    State.PAUSED: Release.HOLD,
    State.FAILED: Release.HOLD,
}


class ClaimCode(enum.IntEnum):
    """The answer of ``claim.lua``: may this delivery of a node run?"""

    #: Run it (the stored results its piped input needs come with the answer).
    RUN = 0
    #: The node already completed: skip.
    DONE = 1
    #: The workflow was cancelled or has succeeded: skip.
    ENDED = 2
    #: The workflow is paused or failed: the node is held for resume/retry, skip this delivery.
    HELD = 3
    #: Another delivery of this node is in flight: skip.
    DUPLICATE = 4
    #: The node has not been released (predecessors unfinished): a stray copy, skip.
    UNRELEASED = 5
    #: The delivery does not belong to this workflow: its token is not the submission's (a
    #: message of an earlier workflow with the same id) or its node index is out of range.
    REJECTED = 6
    #: A key of the workflow is missing (evicted): the workflow was failed (Op.LOSE), skip.
    LOST = 7
    #: No such workflow.
    MISSING = -1


#: Claim answer decided by the state alone (other states go on to the node's own checks).
CLAIM_IN_STATE: Final[dict[State, ClaimCode]] = {
    State.CANCELLED: ClaimCode.ENDED,
    State.SUCCEEDED: ClaimCode.ENDED,
    State.PAUSED: ClaimCode.HELD,
    State.FAILED: ClaimCode.HELD,
}


class SubmitCode(enum.IntEnum):
    """Answer of ``submit.lua``."""

    #: Another workflow has the id.
    TAKEN = 0
    #: The id is claimed now.
    CLAIMED = 1
    #: This very submission (same token) claimed it earlier: a retried ``run()``.
    CLAIMED_BEFORE = 2


class Outcome(enum.IntEnum):
    """First element of every state-changing script's reply (``Completion.status``)."""

    #: The call changed something.
    APPLIED = 1
    #: It did not apply (a duplicate, or the wrong state); nothing changed.
    UNCHANGED = 0
    #: There is no such workflow.
    MISSING = -1
    #: The call does not belong to this workflow (wrong token, node index out of range).
    REJECTED = -2
    #: A key of the workflow is missing: the call applied Op.LOSE instead (FAILED).
    LOST = -3


class RejectReason(enum.StrEnum):
    """Why a script refused a delivery (the reason of :attr:`Outcome.REJECTED` and
    :attr:`ClaimCode.REJECTED`)."""

    #: Its token is not the submission's: a message of an earlier workflow with the same id.
    TOKEN = "wrong_token"
    #: Its node index is not a task node 0 <= n < total (or a pipe node is not).
    NODE = "bad_node"
    #: Malformed call arguments (complete's store-result flag).
    ARGS = "bad_args"


class CallbackKind(enum.StrEnum):
    """A workflow callback; the value is the node key a callback delivery carries (wire value)."""

    SUCCESS = "s"
    FAILURE = "f"


class Mode(enum.StrEnum):
    """How released nodes reach the broker (stored in the meta hash)."""

    #: The scripts push messages into dramatiq's Redis queues themselves.
    DIRECT = "d"
    #: The scripts put released nodes in the ready set; the caller enqueues them.
    READY = "r"


class EventCode(enum.StrEnum):
    """The kind of an entry of the events stream, as stored (``k`` field)."""

    NODE_SUCCEEDED = "ok"
    NODE_FAILED = "fail"
    STATE = "state"
    NODE_RELEASED = "rel"
    #: A worker started a node (claim.lua; the entry also has the attempt).
    NODE_STARTED = "start"
    #: A running node reported progress (progress.lua; done, total, note).
    NODE_PROGRESS = "prog"


class MetaField(enum.StrEnum):
    """Fields of a workflow's meta hash (stored format 2)."""

    STATE = "state"
    #: Stored format; absent in hashes written by 0.1.0.
    FORMAT = "format"
    #: The submission's token (a retried ``run()`` finds its own claim of the id).
    TOKEN = "token"
    #: The short token every message of this submission carries (``MESSAGE_TOKEN_CHARS``
    #: hex digits); absent in workflows stored before it existed, whose messages carry none.
    MSG_TOKEN = "mtok"
    #: Task nodes.
    TOTAL = "total"
    SUCCEEDED = "succeeded"
    #: Nodes that failed for good (cleared by retry).
    FAILED_COUNT = "failed_count"
    #: Counter behind the ids of messages the scripts push.
    SEQ = "seq"
    MODE = "mode"
    #: How long keys live after the workflow ended.
    RETENTION_MS = "retention_ms"
    #: How long keys live after the workflow failed (absent: ``retention_ms``).
    FAILED_RETENTION_MS = "failed_retention_ms"
    #: Roots released so far by start.lua's chunks.
    ROOTS_RELEASED = "roots_released"
    #: JSON list of the dramatiq queues of the KEYS pairs (direct mode).
    SLOTS = "slots"
    #: "1": log every release as an event.
    AUDIT = "audit"
    CREATED = "created"
    STARTED = "started"
    FINISHED = "finished"
    UPDATED = "updated"
    FAILED_NODE = "failed_node"
    FAILED_ACTOR = "failed_actor"
    EXC_TYPE = "exc_type"
    EXC_MESSAGE = "exc_message"
    #: JSON message fields of the callbacks (names follow the callback wire values).
    ON_SUCCESS = "cb_s"
    ON_FAILURE = "cb_f"
    #: W3C traceparent of the workflow's root span (only when traced at submit).
    TRACE = "traceparent"
    #: The workflow's name (``Workflow(name=)``; absent when unnamed).
    NAME = "name"
    #: JSON object of the workflow's labels (``Workflow(labels=)``; absent when none).
    LABELS = "labels"


#: Meta field holding each callback's message.
CALLBACK_FIELD: Final[dict[CallbackKind, MetaField]] = {
    CallbackKind.SUCCESS: MetaField.ON_SUCCESS,
    CallbackKind.FAILURE: MetaField.ON_FAILURE,
}
#: Exception type recorded when Op.LOSE fails a workflow (``failed_actor`` is empty).
STATE_LOST: Final = "StateLost"
#: Hex digits of a message token (64 bits: a stale message never matches a new submission).
MESSAGE_TOKEN_CHARS: Final = 16
#: The stored format this version writes (``MetaField.FORMAT``).
META_FORMAT: Final = 2
#: 0.1.0's names of renamed meta fields (format 1 -> 2), in upgrade order.
LEGACY_FIELDS: Final[dict[str, MetaField]] = {
    "ok": MetaField.SUCCEEDED,
    "nf": MetaField.FAILED_COUNT,
    "ret": MetaField.RETENTION_MS,
    "rs": MetaField.ROOTS_RELEASED,
    "tok": MetaField.TOKEN,
    "fnode": MetaField.FAILED_NODE,
    "factor": MetaField.FAILED_ACTOR,
    "fexc": MetaField.EXC_TYPE,
    "fmsg": MetaField.EXC_MESSAGE,
}
#: 0.1.0 meta fields that are no longer written (dropped by the upgrade).
DROPPED_FIELDS: Final[tuple[str, ...]] = ("nv",)
#: Field names of an events-stream entry: kind, node, state; a node_started entry adds the
#: attempt, a node_progress entry done, total and note (total and note only when given).
EVENT_FIELDS: Final[dict[str, str]] = {
    "kind": "k",
    "node": "n",
    "state": "s",
    "attempt": "a",
    "done": "d",
    "total": "t",
    "note": "m",
}
