"""WorkflowMiddleware: the worker side. Each hook delegates to one store call.

Where the hooks sit in dramatiq's message life cycle, and why:

* ``before_process_message``: claim the node. Skips deliveries of completed nodes, of
  cancelled workflows and duplicates in flight; holds deliveries of paused/failed workflows;
  injects the piped input. A claim is idempotent for a message id, so connection errors are
  retried here first (as for completions: a failed attempt goes through dramatiq's Retries,
  whose re-enqueue on a failing RedisBroker may be lost). A store error that persists fails
  the attempt, so dramatiq retries it (it is raised as a MiddlewareError: dramatiq logs any
  other error of a before-hook and runs the actor anyway, unclaimed).
* ``after_process_message``: a success is final, so ``complete.lua`` runs right here, in the
  worker thread (in parallel, not on the queue's one consumer thread). On a RedisBroker of the
  store's own Redis the same script also acks the delivery, and the consumer skips its own ack
  round trip (``before_worker_boot`` wraps the broker's consumers for that). Failures are only
  remembered (thread-local): whether a failed attempt is final is decided by Retries, which
  may run before or after us depending on where the user put this middleware.
* ``before_ack`` / ``before_nack``: dramatiq's final word. ``before_ack`` completes a success
  that could not be counted earlier because Redis was unreachable; ``before_nack`` (retries
  exhausted, ``throws``, age limit) runs ``fail.lua``. Both run before the broker
  acknowledges. If the store is unreachable the hook raises an error that dramatiq treats as a
  broker connection error: it retries the hook every second and does NOT ack, so a completion
  is never lost, and a crash meanwhile leaves the message unacked for redelivery (the done bit
  makes the retry harmless).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, final

import dramatiq
from dramatiq.errors import ActorNotFound, BrokerConnectionError
from dramatiq.middleware import MiddlewareError, SkipMessage

from . import _codec
from ._dag import ResultSpec, spec_nodes
from ._dramatiq import (
    enqueue_after_barrier,
    enqueue_released,
    queue_keys_for,
    shares_store_redis,
)
from ._plan import OPTION, ClaimCode
from .errors import DecodeError, ResultTooLarge, StoreConnectionError, StoreError

if TYPE_CHECKING:
    from collections.abc import Callable

    from dramatiq.broker import MessageProxy
    from dramatiq.worker import Worker

    from ._store._base import Loaded, StoreBackend

from ._store._base import BrokerAck

__all__ = ["WorkflowMiddleware"]

logger = logging.getLogger("aioworkflow")
T = TypeVar("T")

#: Set on a MessageProxy whose delivery ``complete.lua`` already acked.
_ACKED = "_aioworkflow_acked"


def _skip_acked_acks(broker: dramatiq.Broker) -> None:
    """Make ``broker``'s consumers skip the ack of deliveries ``complete.lua`` acked already.

    Only a RedisBroker consumer that keeps the ``queued_message_ids`` set is wrapped (the ack
    it skips would only have removed the id from that set and found nothing left to do in
    Redis); any other consumer acks as usual, which stays correct, just one round trip dearer.
    """
    original = broker.consume

    def consume(*args: Any, **kwargs: Any) -> Any:
        consumer = original(*args, **kwargs)
        ids = getattr(consumer, "queued_message_ids", None)
        if not isinstance(ids, set):
            return consumer
        ack = consumer.ack

        def ack_unless_done(message: MessageProxy) -> None:
            if getattr(message, _ACKED, False):
                ids.discard(message.message_id)
            else:
                ack(message)

        consumer.ack = ack_unless_done  # type: ignore[method-assign]
        return consumer

    setattr(broker, "consume", consume)  # noqa: B010 - an instance attribute over the method


class _StoreUnavailable(MiddlewareError, BrokerConnectionError):
    """Raised from before_ack/before_nack so that dramatiq retries the hook and does not ack."""

    def __init__(self, message: str) -> None:
        Exception.__init__(self, message)


class _ClaimFailed(MiddlewareError):
    """Raised from before_process_message so that the attempt fails instead of running."""


@dataclass(frozen=True, slots=True)
class _Ctx:
    loaded: Loaded
    queue_keys: list[str]
    keep: frozenset[int]


def _build(spec: ResultSpec, values: dict[int, Any]) -> Any:
    if isinstance(spec, int):
        return values.get(spec)
    if isinstance(spec, list):
        return [_build(s, values) for s in spec]
    return None


@final
class WorkflowMiddleware(dramatiq.Middleware):
    """Runs workflow nodes on dramatiq workers. Add it to every broker that runs workflows.

    Args:
        store: where workflow state lives (``RedisStore`` or ``MemoryStore``).
        reconcile_interval: seconds between reconciler sweeps in each worker process
            (0 disables the reconciler).
        reconcile_age: seconds a released node may stay unclaimed before it is re-enqueued.
        cache_size: decoded DAGs kept per process.
        store_attempts: tries of a completion call on connection errors before handing the
            retry over to dramatiq's post-processing loop.
    """

    def __init__(
        self,
        store: StoreBackend,
        *,
        reconcile_interval: float = 5.0,
        reconcile_age: float = 30.0,
        cache_size: int = 256,
        store_attempts: int = 5,
    ) -> None:
        self.store = store
        self.reconcile_interval = reconcile_interval
        self.reconcile_age_ms = int(reconcile_age * 1000)
        self.store_attempts = store_attempts
        self._cache: OrderedDict[str, _Ctx] = OrderedDict()
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()
        self._local = threading.local()
        self._stop = threading.Event()
        self._reconciler: threading.Thread | None = None
        self._broker: dramatiq.Broker | None = None
        self._acking: dramatiq.Broker | None = None

    @property
    def actor_options(self) -> set[str]:
        """The message option carrying ``[workflow id, node]``."""
        return {OPTION}

    # -- helpers ---------------------------------------------------------------------------
    def _ctx(self, broker: dramatiq.Broker, workflow_id: str) -> _Ctx | None:
        with self._cache_lock:
            ctx = self._cache.get(workflow_id)
            if ctx is not None:
                self._cache.move_to_end(workflow_id)
                return ctx
        loaded = self.store.sync.load(workflow_id)
        if loaded is None:
            return None
        ctx = _Ctx(loaded, queue_keys_for(broker, loaded), loaded.dag.keep_results())
        with self._cache_lock:
            self._cache[workflow_id] = ctx
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return ctx

    def _forget(self, workflow_id: str) -> None:
        with self._cache_lock:
            self._cache.pop(workflow_id, None)

    def _retrying(self, call: Callable[[], T]) -> T:
        delay = 0.05
        for attempt in range(self.store_attempts):
            try:
                return call()
            except StoreConnectionError:
                if attempt == self.store_attempts - 1:
                    raise
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def _pending(self, message: MessageProxy) -> tuple[Any, BaseException | None] | None:
        pending = getattr(self._local, "pending", None)
        if pending is None or pending[0] is not message:
            return None
        return pending[1], pending[2]

    # -- hooks -----------------------------------------------------------------------------
    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        """Claim the node, or skip the delivery; inject the piped input."""
        ref = message.options.get(OPTION)
        if ref is None:
            return
        try:
            self._claim(broker, message, ref)
        except MiddlewareError:  # SkipMessage
            raise
        except Exception as exc:
            raise _ClaimFailed(f"could not claim {message}: {exc!r}") from exc

    def _claim(self, broker: dramatiq.Broker, message: MessageProxy, ref: list[Any]) -> None:
        workflow_id, node = ref[0], ref[1]
        ctx = self._retrying(lambda: self._ctx(broker, workflow_id))
        if ctx is None:
            logger.warning("Workflow %s no longer exists; skipping %s.", workflow_id, message)
            raise SkipMessage("workflow not found")
        spec = ctx.loaded.dag.pipes.get(node) if isinstance(node, int) and len(ref) < 3 else None
        wanted = spec_nodes(spec) if spec is not None else []
        claim = self._retrying(
            lambda: self.store.sync.claim(workflow_id, node, message.message_id, wanted)
        )
        if not claim.run:
            if claim.code == ClaimCode.MISSING:
                self._forget(workflow_id)
                logger.warning("Workflow %s no longer exists; skipping %s.", workflow_id, message)
            raise SkipMessage(f"workflow {workflow_id} node {node}: claim code {claim.code}")
        if node in ctx.loaded.dag.pipes and len(ref) < 3:
            values = {
                n: None if blob is None else _codec.unpack(blob)
                for n, blob in zip(wanted, claim.results, strict=True)
            }
            inner = message._message
            message._message = inner.copy(
                args=(*inner.args, _build(spec, values)), options={OPTION: [workflow_id, node, 1]}
            )

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        """Count a success right here, in the worker thread; remember failures for later.

        dramatiq runs ``before_ack``/``before_nack`` on the single consumer thread of each
        queue, so completing there would serialise every completion of a queue behind one
        thread. A success is final as soon as the actor returned, so it is counted now, in
        parallel on the worker threads. Only if Redis stays unreachable is the completion
        handed to ``before_ack``, where a connection error makes dramatiq retry the
        post-processing instead of acking (an exception raised here would be swallowed).
        Whether a raised exception is a final failure is decided by ``Retries`` later, so
        failures are recorded in ``before_nack``.
        """
        ref = message.options.get(OPTION)
        if ref is None:
            return
        if exception is None and isinstance(ref[1], int):
            try:
                self._complete(broker, ref[0], ref[1], result, message)
            except _StoreUnavailable:
                logger.warning(
                    "Completion of workflow %s node %s deferred to ack time.", ref[0], ref[1]
                )
            else:
                self._local.pending = None
                return
        self._local.pending = (message, result, exception)

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        """A delivery skipped by another middleware (AgeLimit) may be a final failure."""
        if OPTION in message.options and message.failed:
            self._local.pending = (message, None, message._exception)

    def before_ack(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        """The attempt is over and will not be retried: count a success."""
        ref = message.options.get(OPTION)
        if ref is None:
            return
        pending = self._pending(message)
        if pending is None or isinstance(ref[1], str):
            return
        result, exc = pending
        if exc is None:
            self._complete(broker, ref[0], ref[1], result)
        elif isinstance(exc, ActorNotFound):  # Retries cannot retry what has no actor
            self._fail(broker, ref[0], ref[1], message.actor_name, exc)
        self._local.pending = None

    def before_nack(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        """dramatiq gave up on the message: the node has failed."""
        ref = message.options.get(OPTION)
        if ref is None or isinstance(ref[1], str):
            return
        pending = self._pending(message)
        # never processed (unknown actor): dramatiq stuffed the reason into the message
        exc = pending[1] if pending is not None else message._exception
        self._fail(broker, ref[0], ref[1], message.actor_name, exc)
        self._local.pending = None

    def _ack_for(self, broker: dramatiq.Broker, message: MessageProxy) -> BrokerAck | None:
        """What ``complete.lua`` needs to ack ``message`` itself, if this broker allows it."""
        redis_id = message.options.get("redis_message_id")
        if broker is not self._acking or not isinstance(redis_id, str):
            return None
        ns = getattr(broker, "namespace", "dramatiq")
        broker_id = str(getattr(broker, "broker_id", ""))
        keys = (
            f"{ns}:__acks__.{broker_id}.{message.queue_name}",
            f"{ns}:{message.queue_name}.msgs",
            f"{ns}:__heartbeats__",
        )
        return BrokerAck(keys, redis_id, broker_id)

    def _complete(
        self,
        broker: dramatiq.Broker,
        workflow_id: str,
        node: int,
        result: Any,
        message: MessageProxy | None = None,
    ) -> None:
        try:
            ctx = self._retrying(lambda: self._ctx(broker, workflow_id))
            if ctx is None:
                logger.warning("Workflow %s vanished before node %s completed.", workflow_id, node)
                return
            blob = None
            if node in ctx.keep:
                try:
                    blob = _codec.pack(result)
                except TypeError as exc:
                    self._fail(broker, workflow_id, node, "", exc)
                    return
                if len(blob) > self.store.result_limit:
                    err = ResultTooLarge(len(blob), self.store.result_limit)
                    self._fail(broker, workflow_id, node, "", err)
                    return
            ack = None
            if message is not None and ctx.loaded.mode == "d":
                ack = self._ack_for(broker, message)
            done = self._retrying(
                lambda: self.store.sync.complete(workflow_id, node, blob, ctx.queue_keys, ack)
            )
        except StoreConnectionError as exc:
            raise _StoreUnavailable(str(exc)) from exc
        if ack is not None and message is not None:
            setattr(message, _ACKED, True)
        if done.status < 0:  # its keys expired or were deleted while the node ran
            self._forget(workflow_id)
            logger.warning("Workflow %s vanished before node %s completed.", workflow_id, node)
            return
        if ctx.loaded.mode == "r" and done.released:
            enqueue_after_barrier(broker, workflow_id, ctx.loaded, done.released)

    def _fail(
        self,
        broker: dramatiq.Broker,
        workflow_id: str,
        node: int,
        actor: str,
        exc: BaseException | None,
    ) -> None:
        exc_type = type(exc).__name__ if exc is not None else "MessageFailed"
        text = str(exc) if exc is not None else "dramatiq rejected the message"
        try:
            ctx = self._retrying(lambda: self._ctx(broker, workflow_id))
            if ctx is None:
                return
            name = actor or ctx.loaded.dag.node(node).actor_name
            info = (name, exc_type, text[:2000])
            done = self._retrying(
                lambda: self.store.sync.fail(workflow_id, node, info, ctx.queue_keys)
            )
        except StoreConnectionError as exc2:
            raise _StoreUnavailable(str(exc2)) from exc2
        if done.status < 0:
            self._forget(workflow_id)
            logger.warning("Workflow %s vanished before node %s failed.", workflow_id, node)
            return
        if ctx.loaded.mode == "r" and done.released:
            enqueue_after_barrier(broker, workflow_id, ctx.loaded, done.released)

    def before_worker_boot(self, broker: dramatiq.Broker, worker: Worker) -> None:
        """On a RedisBroker of the store's Redis, let ``complete.lua`` ack successes."""
        if self._acking is None and shares_store_redis(self.store, broker):
            _skip_acked_acks(broker)
            self._acking = broker

    # -- reconciler ------------------------------------------------------------------------
    def after_worker_boot(self, broker: dramatiq.Broker, worker: Worker) -> None:
        """Start this process's reconciler thread."""
        if self.reconcile_interval > 0 and self._reconciler is None:
            self._stop.clear()
            self._broker = broker
            self._reconciler = threading.Thread(
                target=self._reconcile_loop, name="aioworkflow-reconciler", daemon=True
            )
            self._reconciler.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Worker) -> None:
        """Stop the reconciler thread."""
        self._stop.set()
        if self._reconciler is not None:
            self._reconciler.join(timeout=10)
            self._reconciler = None

    def _reconcile_loop(self) -> None:
        while not self._stop.wait(self.reconcile_interval * random.uniform(0.8, 1.2)):
            try:
                self.reconcile_once()
            except (StoreError, DecodeError):
                logger.warning("Reconciler sweep failed; trying again later.", exc_info=True)

    def reconcile_once(self, broker: dramatiq.Broker | None = None, *, limit: int = 500) -> int:
        """One reconciler sweep: re-enqueue released nodes nobody claimed in time.

        Returns:
            How many nodes or callbacks were handed out again.
        """
        broker = broker or self._broker or dramatiq.get_broker()
        sent = 0
        for workflow_id in self.store.sync.active(limit):
            ctx = self._ctx(broker, workflow_id)
            if ctx is None:
                self.store.sync.forget(workflow_id)
                continue
            rec = self.store.sync.reconcile(
                workflow_id, self.reconcile_age_ms, 1000, ctx.queue_keys
            )
            if rec.status == -1 or (
                rec.state is not None and rec.state.is_final and rec.extra == 0
            ):
                self.store.sync.forget(workflow_id)
            if rec.released:
                logger.info(
                    "Reconciler re-sends %s of workflow %s.", list(rec.released), workflow_id
                )
                if ctx.loaded.mode == "r":
                    enqueue_released(broker, workflow_id, ctx.loaded, rec.released)
                sent += len(rec.released)
        return sent
