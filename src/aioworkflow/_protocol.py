"""The script protocol: one call builder and one reply parser per Lua script. Pure.

Theory of operation
-------------------
Every store operation after the upload is one Lua script call. A builder (``claim_call``,
``complete_call``, ...) turns the operation's arguments into a :class:`ScriptCall` (script name,
KEYS, ARGV, in the order the script's header documents); a driver runs it, and the script's
parser (``parse_claim``, ``parse_complete``, ...) narrows redis-py's ``Any`` into a typed
outcome. The sync driver, the async driver and the worker's lean wire path only run
ScriptCalls and parse with these functions, so a reply change touches a script, its builder or
parser, and nothing else.

=============== ================================== ===================== =================
script          when                               builder               reply
=============== ================================== ===================== =================
``submit``      ``run()`` claims the workflow id   ``submit_call``       :class:`Submitted`
``start``       ``run()`` releases the roots       ``start_call``        :class:`Completion`
``claim``       a worker is about to run a node    ``claim_call``        :class:`Claim`
``complete``    the node's task succeeded          ``complete_call``     :class:`Completion`
``fail``        dramatiq gave up on the node       ``fail_call``         :class:`Completion`
``cancel`` ...  ``cancel/pause/resume/retry()``    ``control_call``      :class:`Completion`
``reconcile``   the workers' reconciler timer      ``reconcile_call``    :class:`Completion`
``progress``    a node calls ``report_progress``   ``progress_call``     bool (logged)
=============== ================================== ===================== =================

Codes are enums from ``_machine`` (:class:`ClaimCode`, :class:`Outcome`, :class:`CallbackKind`);
they compare equal to the integers and strings the scripts send.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple, final

from ._keys import keys_of
from ._machine import CallbackKind, ClaimCode, Op, Outcome, State, SubmitCode

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "BrokerAck",
    "Claim",
    "Completion",
    "ScriptCall",
    "ScriptName",
    "SubmitCode",
    "Submitted",
    "claim_call",
    "complete_call",
    "control_call",
    "fail_call",
    "parse_claim",
    "parse_complete",
    "parse_control",
    "parse_fail",
    "parse_progress",
    "parse_reconcile",
    "parse_start",
    "parse_submit",
    "progress_call",
    "reconcile_call",
    "start_call",
    "submit_call",
]


class ScriptName(enum.StrEnum):
    """One atomic operation each; the file is ``lua/<value>.lua``."""

    SUBMIT = "submit"
    START = "start"
    CLAIM = "claim"
    COMPLETE = "complete"
    FAIL = "fail"
    CANCEL = "cancel"
    PAUSE = "pause"
    RESUME = "resume"
    RETRY = "retry"
    RECONCILE = "reconcile"
    PROGRESS = "progress"


#: The control scripts, by the operation they perform.
CONTROL_SCRIPTS: Final[dict[Op, ScriptName]] = {
    Op.CANCEL: ScriptName.CANCEL,
    Op.PAUSE: ScriptName.PAUSE,
    Op.RESUME: ScriptName.RESUME,
    Op.RETRY: ScriptName.RETRY,
}
#: ``start.lua`` phases: the first call moves PENDING to RUNNING; later ones release more roots.
START_FIRST: Final = "first"
START_MORE: Final = "more"


class ScriptCall(NamedTuple):
    """One script invocation: what a driver sends (EVALSHA script KEYS... ARGV...).

    A NamedTuple, not a dataclass: one is built per task on the worker's hot path.
    """

    script: ScriptName
    keys: tuple[str, ...]
    args: tuple[Any, ...]


@final
@dataclass(frozen=True, slots=True)
class BrokerAck:
    """A RedisBroker delivery for ``complete.lua`` to acknowledge in the same atomic step.

    Direct mode only (the broker's queues live in the store's Redis): the script does what
    dramatiq's ``ack`` command does (drop the id from the worker's ack set, then the payload)
    and refreshes the worker's heartbeat, which saves the worker one round trip per task.
    """

    #: The worker's ack set for the queue, the queue's ``.msgs`` hash, the heartbeats zset.
    keys: tuple[str, str, str]
    #: ``message.options["redis_message_id"]``.
    message_id: str
    #: The consuming broker's ``broker_id`` (the heartbeat member).
    broker_id: str


# -- replies ---------------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class Claim:
    """Answer of a claim: whether to run, and the stored results the piped input needs."""

    code: ClaimCode
    #: The piped input's results (RUN); the reason (REJECTED, LOST).
    results: tuple[bytes | None, ...] = ()

    @property
    def run(self) -> bool:
        """Whether the worker should run this delivery."""
        return self.code == ClaimCode.RUN


@final
@dataclass(frozen=True, slots=True)
class Completion:
    """Answer of start/complete/fail/control/reconcile scripts.

    ``status`` says whether the call changed something (:class:`Outcome`). ``released`` lists
    what the call released (task nodes as ints, callbacks as :class:`CallbackKind`); in ready
    mode the caller enqueues them. ``extra`` is the reconciler's count of entries still ready.
    """

    status: Outcome
    state: State | None
    released: tuple[int | CallbackKind, ...] = ()
    extra: int = 0
    #: Why the call was :attr:`Outcome.REJECTED` ("token", "node", "flag"), or the key found
    #: missing (:attr:`Outcome.LOST`); "" otherwise.
    reason: str = ""


@final
@dataclass(frozen=True, slots=True)
class Submitted:
    """Answer of ``submit.lua``, with the state found for :attr:`SubmitCode.CLAIMED_BEFORE`."""

    code: SubmitCode
    state: State | None = None

    @property
    def pending(self) -> bool:
        """Whether the upload still has to be written (the workflow has not started)."""
        return self.code is SubmitCode.CLAIMED or self.state is State.PENDING


# -- builders --------------------------------------------------------------------------------


def submit_call(workflow_id: str, token: str, retention_ms: int) -> ScriptCall:
    """Claim ``workflow_id`` for the submission ``token`` (keys live ``retention_ms`` at most)."""
    return ScriptCall(ScriptName.SUBMIT, keys_of(workflow_id), (workflow_id, token, retention_ms))


def start_call(
    workflow_id: str, first: bool, offset: int, roots: Sequence[int], queue_keys: Sequence[str]
) -> ScriptCall:
    """Release the roots ``roots`` (at ``offset`` in the root list); ``first`` starts it."""
    phase = START_FIRST if first else START_MORE
    return ScriptCall(
        ScriptName.START,
        (*keys_of(workflow_id), *queue_keys),
        (workflow_id, phase, offset, *roots),
    )


#: Piped inputs of at most this many results travel in the claim's reply; a wider input (a
#: step after a group of thousands) is read after the claim, PIPE_INLINE results per HMGET:
#: the results of finished predecessors never change, and one script fetching 100,000 of them
#: would hold Redis for over 100 ms.
PIPE_INLINE = 2000


def claim_call(
    workflow_id: str,
    node: int | str,
    message_id: str,
    pipe_nodes: Sequence[int],
    token: str = "",
    attempt: int = 1,
) -> ScriptCall:
    """May the delivery of ``node`` whose claim key is ``message_id`` run? Also fetch
    ``pipe_nodes``' results.

    The claim key is the ref's push id (``Ref.claim_key``), the message id for a ref without one.

    ``token`` is the delivery's message token ("" for a message without one); ``attempt``
    (dramatiq's ``retries`` + 1) labels the ``node_started`` event a RUN answer logs.
    """
    return ScriptCall(
        ScriptName.CLAIM,
        keys_of(workflow_id),
        (workflow_id, node, message_id, token, attempt, *pipe_nodes),
    )


def progress_call(
    workflow_id: str,
    node: int,
    message_id: str,
    token: str,
    progress: tuple[float, float | None, str | None],
) -> ScriptCall:
    """Log a running node's progress, ``(done, total, note)``, as a ``node_progress`` event."""
    done, total, note = progress
    return ScriptCall(
        ScriptName.PROGRESS,
        keys_of(workflow_id),
        (
            workflow_id,
            node,
            message_id,
            token,
            repr(done),
            "" if total is None else repr(total),
            note or "",
        ),
    )


def parse_progress(reply: Any) -> bool:
    """Narrow a ``progress.lua`` reply: whether the report was logged."""
    return bool(reply)


def complete_call(
    workflow_id: str,
    node: int,
    result: bytes | None,
    queue_keys: Sequence[str],
    ack: BrokerAck | None = None,
    now_ms: int = 0,
    token: str = "",
) -> ScriptCall:
    """Count ``node`` as succeeded (storing ``result`` unless None); ``ack`` its delivery."""
    keys = keys_of(workflow_id)
    args = (workflow_id, node, result or b"", 0 if result is None else 1, token)
    if ack is None:
        return ScriptCall(ScriptName.COMPLETE, (*keys, *queue_keys), args)
    return ScriptCall(
        ScriptName.COMPLETE,
        (*keys, *queue_keys, *ack.keys),
        (*args, ack.message_id, ack.broker_id, now_ms),
    )


def fail_call(
    workflow_id: str,
    node: int,
    info: tuple[str, str, str],
    queue_keys: Sequence[str],
    token: str = "",
) -> ScriptCall:
    """Record that ``node`` failed for good; ``info`` is (actor, exception type, message)."""
    return ScriptCall(
        ScriptName.FAIL, (*keys_of(workflow_id), *queue_keys), (workflow_id, node, *info, token)
    )


def control_call(op: Op | str, workflow_id: str, queue_keys: Sequence[str]) -> ScriptCall:
    """Run the control script of ``op`` (cancel, pause, resume, retry).

    Raises:
        ValueError: ``op`` is not a control operation.
    """
    script = CONTROL_SCRIPTS.get(Op(op))
    if script is None:
        raise ValueError(f"not a control operation: {op!r}")
    return ScriptCall(script, (*keys_of(workflow_id), *queue_keys), (workflow_id,))


def reconcile_call(
    workflow_id: str, age_ms: int, limit: int, queue_keys: Sequence[str]
) -> ScriptCall:
    """Hand out again up to ``limit`` entries released ``age_ms`` ago and never claimed."""
    return ScriptCall(
        ScriptName.RECONCILE, (*keys_of(workflow_id), *queue_keys), (workflow_id, age_ms, limit)
    )


# -- parsers ---------------------------------------------------------------------------------
# Lookups by the integer Redis sends (a dict is cheaper than an enum call on the hot path).
_CLAIM_CODES: Final[dict[int, ClaimCode]] = {c.value: c for c in ClaimCode}
_OUTCOMES: Final[dict[int, Outcome]] = {o.value: o for o in Outcome}
_STATE_OF: Final[dict[str | bytes, State]] = {
    **{s.value: s for s in State},
    **{s.value.encode(): s for s in State},
}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _state(value: Any) -> State | None:
    state = _STATE_OF.get(value)
    if state is None and value:
        raise ValueError(f"not a workflow state: {value!r}")
    return state


def _released(values: Sequence[Any]) -> tuple[int | CallbackKind, ...]:
    # task nodes come back as Lua numbers (integer replies), callbacks as "s"/"f"; reconcile
    # also sends nodes it read back from the ready set as numbers
    return tuple(v if type(v) is int else _key(v) for v in values)


def _key(value: Any) -> int | CallbackKind:
    text = _text(value)
    return int(text) if text.lstrip("-").isdigit() else CallbackKind(text)


def parse_submit(reply: Sequence[Any]) -> Submitted:
    """Narrow a ``submit.lua`` reply: ``{code}`` or ``{2, state}``."""
    code = SubmitCode(int(reply[0]))
    return Submitted(code, _state(reply[1]) if len(reply) > 1 else None)


def parse_claim(reply: Sequence[Any]) -> Claim:
    """Narrow a ``claim.lua`` reply: ``{code, results...}`` (``{code, reason}`` when the
    claim was rejected or found the workflow's state lost)."""
    return Claim(_CLAIM_CODES[reply[0]], tuple(reply[1:]))


def parse_control(reply: Sequence[Any]) -> Completion:
    """Narrow a ``{status, state, released...}`` reply (start and the control scripts).

    A lost call's reply is ``{status, state, key, callback?}`` (:attr:`Completion.reason`).
    """
    status = _OUTCOMES[reply[0]]
    if status in (Outcome.REJECTED, Outcome.LOST):
        reason = _text(reply[2]) if len(reply) > 2 else ""
        cbs = tuple(CallbackKind(_text(v)) for v in reply[3:] if v)
        return Completion(status, _state(reply[1]), cbs, reason=reason)
    return Completion(status, _state(reply[1]), _released(reply[2:]))


parse_start = parse_control


def parse_complete(reply: Sequence[Any]) -> Completion:
    """Narrow a ``{status, state, callback, released...}`` reply (``complete``, ``fail``).

    The callback this call dispatched ("" for none) comes first in ``released``. A rejected
    or lost call's fourth element is its :attr:`Completion.reason`.
    """
    status = _OUTCOMES[reply[0]]
    cb = _text(reply[2]) if len(reply) > 2 and reply[2] is not None else ""
    if status in (Outcome.REJECTED, Outcome.LOST):
        reason = _text(reply[3]) if len(reply) > 3 else ""
        released: tuple[int | CallbackKind, ...] = (CallbackKind(cb),) if cb else ()
        return Completion(status, _state(reply[1]), released, reason=reason)
    released = _released(reply[3:])
    if cb:
        released = (CallbackKind(cb), *released)
    return Completion(status, _state(reply[1]), released)


parse_fail = parse_complete


def parse_reconcile(reply: Sequence[Any]) -> Completion:
    """Narrow a ``{status, state, remaining, released...}`` reply; ``extra`` = remaining.

    A lost call's reply is ``{status, state, 0, key, callback?}``.
    """
    extra = int(reply[2]) if len(reply) > 2 else 0
    if _OUTCOMES[reply[0]] is Outcome.LOST:
        cbs = tuple(CallbackKind(_text(v)) for v in reply[4:] if v)
        return Completion(Outcome.LOST, _state(reply[1]), cbs, reason=_text(reply[3]))
    return Completion(_OUTCOMES[reply[0]], _state(reply[1]), _released(reply[3:]), extra)
