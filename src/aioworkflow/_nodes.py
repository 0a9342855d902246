"""What a worker does for one node: claim it before it runs, complete or fail it after.

Each operation is one store call plus whatever the workflow's route does with the nodes it
released. Every store call is idempotent for its delivery, so transient store errors
(``StoreUnavailable``: a lost connection, and error replies of a server that is up but
refuses for a while: OOM, BUSY, READONLY...) are retried here with capped back-off.
Completions and failures try ``attempts`` times, then raise the ``StoreUnavailable``: the
middleware hands the call to dramatiq's post-processing, which keeps retrying it and does not
ack meanwhile. Claims are retried for ``claim_patience`` seconds (see ``claim``).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, TypeVar, final

from dramatiq.middleware import SkipMessage

from . import _codec
from ._dag import ResultSpec, spec_nodes
from ._dramatiq import mark_acked, pipe_input
from ._machine import Outcome, RejectReason
from ._observe import Observer
from ._plan import ClaimCode
from ._upload import parse_ref
from .errors import ResultTooLarge, StoreUnavailable

if TYPE_CHECKING:
    from collections.abc import Callable

    import dramatiq
    from dramatiq.broker import MessageProxy

    from ._context import ContextCache, WorkflowContext
    from ._protocol import Claim, Completion
    from ._store._base import StoreBackend

__all__ = ["NodeOps"]

logger = logging.getLogger("aioworkflow")
T = TypeVar("T")
#: First and longest pause (seconds) between tries of a store call.
FIRST_BACKOFF = 0.05
MAX_BACKOFF = 1.0


def _build(spec: ResultSpec, values: dict[int, Any]) -> Any:
    if isinstance(spec, int):
        return values.get(spec)
    if isinstance(spec, list):
        return [_build(s, values) for s in spec]
    return None


def _attempt(message: MessageProxy) -> int:
    # dramatiq's Retries counts re-deliveries in the "retries" option: 1 for a first delivery
    retries = message.options.get("retries", 0)
    return retries + 1 if type(retries) is int and retries >= 0 else 1


def _skip_claim(claim: Claim, workflow_id: str, node: int | str, message: MessageProxy) -> None:
    """Log why a delivery is skipped, where the reason is worth a warning."""
    reason = claim.results[0] if claim.results else None
    why = reason.decode() if isinstance(reason, bytes) else str(reason)
    if claim.code == ClaimCode.MISSING:
        logger.warning("Workflow %s no longer exists; skipping %s.", workflow_id, message)
    elif claim.code == ClaimCode.REJECTED:
        logger.warning(
            "Skipping %s: it does not belong to workflow %s (%s).",
            message, workflow_id, _WHY.get(why, why),
        )  # fmt: skip
    elif claim.code == ClaimCode.LOST:
        logger.error(
            "Workflow %s lost its state (key %s is missing): it was failed; skipping %s.",
            workflow_id, why, message,
        )  # fmt: skip


def _valid_node(workflow_id: str, node: object, what: str) -> bool:
    """Whether ``node`` is a task node index (an int, not a bool); logs a warning if not."""
    if type(node) is int and node >= 0:
        return True
    logger.warning("Workflow %s: ignoring the %s of invalid node %r.", workflow_id, what, node)
    return False


def _log_rejected(done: Completion, workflow_id: str, node: int, what: str) -> None:
    if done.status == Outcome.REJECTED:
        logger.warning(
            "Workflow %s: ignored the %s of node %s: %s.",
            workflow_id, what, node, _WHY.get(done.reason, done.reason),
        )  # fmt: skip
    elif done.status == Outcome.LOST:
        logger.error(
            "Workflow %s lost its state (key %s is missing): it was failed instead of "
            "counting the %s of node %s.",
            workflow_id, done.reason, what, node,
        )  # fmt: skip


#: What the scripts' rejection reasons mean.
_WHY = {
    RejectReason.TOKEN.value: "its token is not the submission's: a message of an earlier "
    "workflow with the same id, or a forged one",
    RejectReason.NODE.value: "its node index is not a node of the workflow",
    RejectReason.ARGS.value: "malformed call",
}


@final
class NodeOps:
    """Claims, completions and failures of nodes, for the worker threads.

    Args:
        store: where workflow state lives.
        contexts: the process's cache of loaded workflows and their routes.
        attempts: tries of a completion or failure call on transient store errors.
        claim_patience: seconds a claim keeps retrying transient store errors.
    """

    def __init__(
        self,
        store: StoreBackend,
        contexts: ContextCache,
        attempts: int,
        claim_patience: float = 300.0,
    ) -> None:
        self.store = store
        self.contexts = contexts
        self.attempts = attempts
        self.claim_patience = claim_patience
        self.observe = Observer()  # metrics and tracing hooks (no-ops unless enabled)

    def context(
        self, broker: dramatiq.Broker, workflow_id: str, token: str, patience: float | None = None
    ) -> WorkflowContext | None:
        """The loaded workflow, reloaded when the cached one is another submission's.

        An id can be reused once its workflow expired: a process that cached the old one must
        not serve the new one's deliveries with the old DAG (or enqueue with the old token).
        """
        ctx = self.retrying(lambda: self.contexts.get(broker, workflow_id), patience)
        if ctx is not None and ctx.loaded.token != token:
            self.contexts.forget(workflow_id)
            ctx = self.retrying(lambda: self.contexts.get(broker, workflow_id), patience)
        return ctx

    def retrying(self, call: Callable[[], T], patience: float | None = None) -> T:
        """Run ``call``, retrying transient store errors with capped back-off: ``attempts``
        tries, or, with ``patience``, until that many seconds have passed."""
        deadline = None if patience is None else time.monotonic() + patience
        delay = FIRST_BACKOFF
        attempt = 0
        while True:
            try:
                return call()
            except StoreUnavailable:
                attempt += 1
                if deadline is None:
                    if attempt >= self.attempts:
                        raise
                elif time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)

    def claim(self, broker: dramatiq.Broker, message: MessageProxy, raw: Any) -> None:
        """Claim the delivery's node, or raise SkipMessage; inject the piped input.

        ``raw`` is the delivery's ``OPTION`` value. A malformed one (a node that is not an int,
        a bool, not a callback kind, out of range) is skipped and logged before any store call
        that could write; so is a delivery the claim script rejects (a wrong token: a message
        of an earlier workflow with the same id).
        """
        ref = parse_ref(raw)
        if isinstance(ref, str):
            logger.warning(
                "Skipping %s: its workflow reference %r is invalid: %s.", message, raw, ref
            )
            raise SkipMessage(f"invalid workflow reference: {ref}")
        workflow_id, node = ref.workflow_id, ref.node
        # A claim that gives up fails the attempt, and the delivery goes through dramatiq's
        # Retries, whose re-enqueue writes to the broker: on a RedisBroker sharing the sick
        # Redis that write can fail too, and the message is lost. The claim changed nothing
        # yet, so it waits here, for minutes if need be, for the store to come back.
        patience = self.claim_patience
        ctx = self.context(broker, workflow_id, ref.token, patience)
        if ctx is None:
            logger.warning("Workflow %s no longer exists; skipping %s.", workflow_id, message)
            raise SkipMessage("workflow not found")
        if isinstance(node, int) and node >= len(ctx.loaded.dag):
            logger.warning(
                "Skipping %s: workflow %s has no node %d (it has %d).",
                message, workflow_id, node, len(ctx.loaded.dag),
            )  # fmt: skip
            raise SkipMessage(f"workflow {workflow_id} has no node {node}")
        spec = ctx.loaded.dag.pipes.get(node) if isinstance(node, int) and not ref.piped else None
        wanted = spec_nodes(spec) if spec is not None else []
        attempt = _attempt(message)
        claim = self.retrying(
            lambda: self.store.sync.claim(
                workflow_id, node, ref.claim_key(message.message_id), wanted, ref.token, attempt
            ),
            patience,
        )
        if not claim.run:
            _skip_claim(claim, workflow_id, node, message)
            if claim.code == ClaimCode.MISSING:
                self.contexts.forget(workflow_id)
            elif claim.code == ClaimCode.LOST and isinstance(node, int):
                # the claim script cannot send on_failure; fail.lua finds the same key missing
                # and fails the workflow (Op.LOSE)
                self.fail(broker, workflow_id, node, "", None, ref.token)
            raise SkipMessage(f"workflow {workflow_id} node {node}: claim code {claim.code}")
        if isinstance(node, int) and node in ctx.loaded.dag.pipes and not ref.piped:
            values = {
                n: None if blob is None else _codec.unpack(blob)
                for n, blob in zip(wanted, claim.results, strict=True)
            }
            pipe_input(message, ref, _build(spec, values))
        self.observe.claimed(broker, message, ctx, node)  # observability hook

    def complete(
        self,
        broker: dramatiq.Broker,
        workflow_id: str,
        node: int,
        result: Any,
        message: MessageProxy | None = None,
        token: str = "",
    ) -> None:
        """Count a success; with ``message``, its delivery may be acked by the same script.

        ``token`` is the delivery's message token (checked by the script).
        """
        if not _valid_node(workflow_id, node, "success"):
            return
        ctx = self.context(broker, workflow_id, token)
        if ctx is None:
            logger.warning("Workflow %s vanished before node %s completed.", workflow_id, node)
            return
        blob = None
        if node in ctx.keep:
            try:
                blob = _codec.pack(result)
            except TypeError as exc:
                self.fail(broker, workflow_id, node, "", exc, token)
                return
            if len(blob) > self.store.result_limit:
                err = ResultTooLarge(len(blob), self.store.result_limit)
                self.fail(broker, workflow_id, node, "", err, token)
                return
        route = ctx.route
        ack = route.ack_for(message) if message is not None else None
        done = self.retrying(
            lambda: self.store.sync.complete(workflow_id, node, blob, route.queue_keys, ack, token)
        )
        if ack is not None and message is not None:
            mark_acked(message)
        _log_rejected(done, workflow_id, node, "success")
        if done.status == Outcome.REJECTED:
            return
        if done.status == Outcome.LOST:  # failed (StateLost): send on_failure if released
            route.after_barrier(done.released)
            return
        if done.status < 0:  # its keys expired or were deleted while the node ran
            self.contexts.forget(workflow_id)
            logger.warning("Workflow %s vanished before node %s completed.", workflow_id, node)
            return
        route.after_barrier(done.released)
        self.observe.completed(ctx, node, done)  # observability hook

    def fail(
        self,
        broker: dramatiq.Broker,
        workflow_id: str,
        node: int,
        actor: str,
        exc: BaseException | None,
        token: str = "",
    ) -> None:
        """Record a final failure of the node (``actor`` "" means: the DAG's actor name).

        ``token`` is the delivery's message token (checked by the script).
        """
        if not _valid_node(workflow_id, node, "failure"):
            return
        exc_type = type(exc).__name__ if exc is not None else "MessageFailed"
        text = str(exc) if exc is not None else "dramatiq rejected the message"
        ctx = self.context(broker, workflow_id, token)
        if ctx is None:
            return
        if node >= len(ctx.loaded.dag):
            logger.warning(
                "Workflow %s: ignoring the failure of invalid node %r.", workflow_id, node
            )
            return
        name = actor or ctx.loaded.dag.node(node).actor_name
        info = (name, exc_type, text[:2000])
        route = ctx.route
        done = self.retrying(
            lambda: self.store.sync.fail(workflow_id, node, info, route.queue_keys, token)
        )
        _log_rejected(done, workflow_id, node, "failure")
        if done.status == Outcome.REJECTED:
            return
        if done.status == Outcome.LOST:  # failed (StateLost): send on_failure if released
            route.after_barrier(done.released)
            return
        if done.status < 0:
            self.contexts.forget(workflow_id)
            logger.warning("Workflow %s vanished before node %s failed.", workflow_id, node)
            return
        route.after_barrier(done.released)
        self.observe.failed(ctx, node, done)  # observability hook
