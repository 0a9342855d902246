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
from ._plan import ClaimCode
from .errors import ResultTooLarge, StoreUnavailable

if TYPE_CHECKING:
    from collections.abc import Callable

    import dramatiq
    from dramatiq.broker import MessageProxy

    from ._context import ContextCache
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

    def claim(self, broker: dramatiq.Broker, message: MessageProxy, ref: list[Any]) -> None:
        """Claim the delivery's node, or raise SkipMessage; inject the piped input."""
        workflow_id, node = ref[0], ref[1]
        # A claim that gives up fails the attempt, and the delivery goes through dramatiq's
        # Retries, whose re-enqueue writes to the broker: on a RedisBroker sharing the sick
        # Redis that write can fail too, and the message is lost. The claim changed nothing
        # yet, so it waits here, for minutes if need be, for the store to come back.
        patience = self.claim_patience
        ctx = self.retrying(lambda: self.contexts.get(broker, workflow_id), patience)
        if ctx is None:
            logger.warning("Workflow %s no longer exists; skipping %s.", workflow_id, message)
            raise SkipMessage("workflow not found")
        spec = ctx.loaded.dag.pipes.get(node) if isinstance(node, int) and len(ref) < 3 else None
        wanted = spec_nodes(spec) if spec is not None else []
        claim = self.retrying(
            lambda: self.store.sync.claim(workflow_id, node, message.message_id, wanted), patience
        )
        if not claim.run:
            if claim.code == ClaimCode.MISSING:
                self.contexts.forget(workflow_id)
                logger.warning("Workflow %s no longer exists; skipping %s.", workflow_id, message)
            raise SkipMessage(f"workflow {workflow_id} node {node}: claim code {claim.code}")
        if node in ctx.loaded.dag.pipes and len(ref) < 3:
            values = {
                n: None if blob is None else _codec.unpack(blob)
                for n, blob in zip(wanted, claim.results, strict=True)
            }
            pipe_input(message, workflow_id, node, _build(spec, values))

    def complete(
        self,
        broker: dramatiq.Broker,
        workflow_id: str,
        node: int,
        result: Any,
        message: MessageProxy | None = None,
    ) -> None:
        """Count a success; with ``message``, its delivery may be acked by the same script."""
        ctx = self.retrying(lambda: self.contexts.get(broker, workflow_id))
        if ctx is None:
            logger.warning("Workflow %s vanished before node %s completed.", workflow_id, node)
            return
        blob = None
        if node in ctx.keep:
            try:
                blob = _codec.pack(result)
            except TypeError as exc:
                self.fail(broker, workflow_id, node, "", exc)
                return
            if len(blob) > self.store.result_limit:
                err = ResultTooLarge(len(blob), self.store.result_limit)
                self.fail(broker, workflow_id, node, "", err)
                return
        route = ctx.route
        ack = route.ack_for(message) if message is not None else None
        done = self.retrying(
            lambda: self.store.sync.complete(workflow_id, node, blob, route.queue_keys, ack)
        )
        if ack is not None and message is not None:
            mark_acked(message)
        if done.status < 0:  # its keys expired or were deleted while the node ran
            self.contexts.forget(workflow_id)
            logger.warning("Workflow %s vanished before node %s completed.", workflow_id, node)
            return
        route.after_barrier(done.released)

    def fail(
        self,
        broker: dramatiq.Broker,
        workflow_id: str,
        node: int,
        actor: str,
        exc: BaseException | None,
    ) -> None:
        """Record a final failure of the node (``actor`` "" means: the DAG's actor name)."""
        exc_type = type(exc).__name__ if exc is not None else "MessageFailed"
        text = str(exc) if exc is not None else "dramatiq rejected the message"
        ctx = self.retrying(lambda: self.contexts.get(broker, workflow_id))
        if ctx is None:
            return
        name = actor or ctx.loaded.dag.node(node).actor_name
        info = (name, exc_type, text[:2000])
        route = ctx.route
        done = self.retrying(
            lambda: self.store.sync.fail(workflow_id, node, info, route.queue_keys)
        )
        if done.status < 0:
            self.contexts.forget(workflow_id)
            logger.warning("Workflow %s vanished before node %s failed.", workflow_id, node)
            return
        route.after_barrier(done.released)
