"""WorkflowMiddleware: the worker side. Each hook delegates to one node operation.

Where the hooks sit in dramatiq's message life cycle (dramatiq 2.2.1), and why:

* ``before_process_message``: claim the node. Skips deliveries of completed nodes, of
  cancelled workflows and duplicates in flight; holds deliveries of paused/failed workflows;
  injects the piped input. A claim is idempotent for a message id, so transient store errors
  (``StoreUnavailable``: lost connections, OOM, BUSY, READONLY...) are retried here for up to
  ``claim_patience`` (a failed attempt goes through dramatiq's Retries, whose re-enqueue on a
  failing RedisBroker may be lost). A store error that persists fails the attempt, so
  dramatiq retries it (it is raised as a MiddlewareError: dramatiq logs any
  other error of a before-hook and runs the actor anyway, unclaimed).
* ``after_process_message``: a success is final as soon as the actor returned, so
  ``complete.lua`` runs right here. On a RedisBroker of the store's own Redis the same script
  also acks the delivery, and the consumer skips its own ack round trip (``before_worker_boot``
  installs that shortcut). Failures are only remembered: whether a failed attempt is final is
  decided by Retries, which may run before or after us depending on where the user put this
  middleware. An error raised by an after-hook is logged and swallowed by dramatiq, so a
  completion that cannot reach Redis is handed to ``before_ack`` instead.
* ``before_ack`` / ``before_nack``: dramatiq's final word. ``before_ack`` completes a success
  that could not be counted earlier because Redis was unreachable; ``before_nack`` (retries
  exhausted, ``throws``, age limit) runs ``fail.lua``. Both run before the broker
  acknowledges. If the store is unavailable (any ``StoreUnavailable``) the hook raises an
  error that dramatiq treats as a broker connection error: it retries the post-processing
  every second and does NOT ack, so a completion is never lost, and a crash meanwhile leaves
  the message unacked for redelivery (the done bit makes the retry harmless). Any other error
  (a bug) is raised as a ``MiddlewareError``: dramatiq logs it and leaves the delivery unacked
  until the worker restarts, rather than swallowing it and acking.

Threads. dramatiq 2.2.1 runs the post-processing (``before_ack``/``before_nack``, then the
consumer's ``ack``/``nack``) on the *worker* thread: ``WorkerThread.process_message`` calls
``ConsumerThread.post_process_message`` in its ``finally``, right after
``after_process_message``/``after_skip_message`` of the same delivery. (This module used to say
the consumer thread, where older dramatiq releases queued acks.) The code relies on it: what the
after-hooks leave for ``before_ack``/``before_nack`` is kept in a thread-local, and the mark
that the ack shortcut sets after ``complete.lua`` acked a delivery is read by the consumer's
``ack`` on that same thread (``tests/test_failure_modes.py`` pins both). Two kinds of delivery
are post-processed on the consumer thread instead, without any after-hook: a message for an
unknown actor (its ``before_nack`` finds nothing pending and uses the exception dramatiq
recorded) and a delayed delivery moved to its queue once due (its ``before_ack`` finds nothing
pending and does nothing; the moved copy is processed later as usual).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

import dramatiq
from dramatiq.errors import ActorNotFound, BrokerConnectionError
from dramatiq.middleware import MiddlewareError

from ._context import ContextCache
from ._dramatiq import AckShortcut, direct_mode, failure_of
from ._nodes import NodeOps
from ._plan import OPTION
from ._progress import Reporter, activate, finish
from ._reconciler import Reconciler
from ._upload import parse_ref, ref_token
from .errors import ConfigurationError, StoreUnavailable

if TYPE_CHECKING:
    from collections.abc import Callable

    from dramatiq.broker import MessageProxy
    from dramatiq.worker import Worker

    from ._store._base import StoreBackend

__all__ = ["WorkflowMiddleware", "find_store"]

logger = logging.getLogger("aioworkflow")


class _StoreUnavailable(MiddlewareError, BrokerConnectionError):
    """Raised from before_ack/before_nack so that dramatiq retries the hook and does not ack."""

    def __init__(self, message: str) -> None:
        Exception.__init__(self, message)
        self.message = message  # dramatiq's DramatiqError.__str__ reads it


class _ClaimFailed(MiddlewareError):
    """Raised from before_process_message so that the attempt fails instead of running."""


class _NotRecorded(MiddlewareError):
    """Raised from before_ack/before_nack for a non-transient error (a bug): dramatiq logs
    it and leaves the delivery unacked (redelivered once the worker restarts), instead of
    swallowing it and acking a delivery whose outcome was not recorded."""


class _Refused(ConfigurationError, MiddlewareError):
    """A ``ConfigurationError`` at worker boot that dramatiq lets through (it swallows the
    errors of before-hooks that are not ``MiddlewareError``s): the worker does not start."""


def _unavailable(call: Callable[[], None]) -> None:
    """Run a node operation for dramatiq's post-processing: a sick store blocks the ack."""
    try:
        call()
    except StoreUnavailable as exc:  # dramatiq retries the hook every second, no ack
        raise _StoreUnavailable(str(exc)) from exc
    except MiddlewareError:
        raise
    except Exception as exc:
        raise _NotRecorded(f"outcome not recorded, delivery left unacked: {exc!r}") from exc


#: What every store has (``StoreBackend``'s members); checked at construction so that a
#: wrong argument fails here and not at worker boot with an AttributeError.
_STORE_MEMBERS = ("sync", "aio", "aclose", "close", "shares_server", "retention_ms")


def _check_store(store: object) -> None:
    missing = [m for m in _STORE_MEMBERS if not hasattr(type(store), m) and not hasattr(store, m)]
    if missing:
        hint = ""
        if type(store).__module__.startswith("dramatiq.rate_limits"):
            hint = (
                " (a dramatiq rate-limiter backend, as dramatiq-workflow takes: pass "
                "RedisStore(client) or MemoryStore(), or use "
                "aioworkflow.compat.dramatiq_workflow.WorkflowMiddleware)"
            )
        raise ConfigurationError(
            f"WorkflowMiddleware needs a workflow store (RedisStore or MemoryStore), got "
            f"{type(store).__qualname__}{hint}"
        )


class WorkflowMiddleware(dramatiq.Middleware):
    """Runs workflow nodes on dramatiq workers. Add it to every broker that runs workflows.

    Args:
        store: where workflow state lives (``RedisStore`` or ``MemoryStore``).
        reconcile_interval: seconds between reconciler sweeps in each worker process
            (0 disables the reconciler).
        reconcile_age: seconds a released node may stay unclaimed before it is re-enqueued.
        cache_size: decoded DAGs kept per process.
        store_attempts: tries of a completion call on transient store errors (lost
            connection, OOM, BUSY, READONLY...) before handing the retry over to dramatiq's
            post-processing loop (which does not ack until the completion is recorded).
        claim_patience: seconds a claim retries transient store errors before it fails the
            attempt (default five minutes; see ``_nodes.NodeOps.claim`` for why so long).
    """

    def __init__(
        self,
        store: StoreBackend,
        *,
        reconcile_interval: float = 5.0,
        reconcile_age: float = 30.0,
        cache_size: int = 256,
        store_attempts: int = 5,
        claim_patience: float = 300.0,
    ) -> None:
        _check_store(store)
        self.store = store
        self._acks = AckShortcut()
        contexts = ContextCache(store, cache_size, self._acks)
        self._nodes = NodeOps(store, contexts, store_attempts, claim_patience)
        self._reconciler = Reconciler(
            store, contexts, reconcile_interval, int(reconcile_age * 1000)
        )
        self._local = threading.local()

    @property
    def reconcile_interval(self) -> float:
        """Seconds between reconciler sweeps (0: no reconciler); read at worker boot."""
        return self._reconciler.interval

    @reconcile_interval.setter
    def reconcile_interval(self, value: float) -> None:
        self._reconciler.interval = value

    @property
    def reconcile_age_ms(self) -> int:
        """Milliseconds a released node may stay unclaimed before it is re-enqueued."""
        return self._reconciler.age_ms

    @reconcile_age_ms.setter
    def reconcile_age_ms(self, value: int) -> None:
        self._reconciler.age_ms = value

    @property
    def store_attempts(self) -> int:
        """Tries of a store call on connection errors."""
        return self._nodes.attempts

    @store_attempts.setter
    def store_attempts(self, value: int) -> None:
        self._nodes.attempts = value

    @property
    def actor_options(self) -> set[str]:
        """The message option carrying ``[workflow id, node]``."""
        return {OPTION}

    # -- what the after-hooks leave for before_ack/before_nack (same worker thread) ---------
    def _remember(self, message: MessageProxy, result: Any, exc: BaseException | None) -> None:
        self._local.pending = (message, result, exc)

    def _settled(self) -> None:
        self._local.pending = None

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
            self._nodes.claim(broker, message, ref)
        except MiddlewareError:  # SkipMessage
            raise
        except Exception as exc:
            raise _ClaimFailed(f"could not claim {message}: {exc!r}") from exc
        # a task node: report_progress reaches the store (a callback: it does nothing); the
        # progress script checks the delivery still holds the node's claim, by its claim key
        parsed = parse_ref(ref)
        activate(
            Reporter(
                self._nodes.store.sync,
                parsed.workflow_id,
                parsed.node,
                parsed.claim_key(message.message_id),
                parsed.token,
            )
            if not isinstance(parsed, str) and isinstance(parsed.node, int)
            else None
        )

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        """Count a success right here; remember failures (and deferred successes) for later."""
        ref = message.options.get(OPTION)
        if ref is None:
            return
        finish()  # the last report lands before the completion's node_succeeded
        self._nodes.observe.ran(message, exception)  # observability hook: ends the node's span
        if exception is None and isinstance(ref[1], int):
            try:
                self._nodes.complete(broker, ref[0], ref[1], result, message, ref_token(ref))
            except Exception as exc:  # dramatiq would log and drop it: before_ack retries
                logger.warning(
                    "Completion of workflow %s node %s deferred to ack time: %r",
                    ref[0],
                    ref[1],
                    exc,
                    exc_info=not isinstance(exc, StoreUnavailable),
                )
            else:
                self._settled()
                return
        self._remember(message, result, exception)

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        """A delivery skipped by another middleware (AgeLimit) may be a final failure."""
        self._nodes.observe.ran(message, None)  # observability hook: ends the node's span
        finish()
        if OPTION in message.options and message.failed:
            self._remember(message, None, failure_of(message))

    def before_ack(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        """The attempt is over and will not be retried: count a deferred success."""
        ref = message.options.get(OPTION)
        if ref is None:
            return
        pending = self._pending(message)
        if pending is None or isinstance(ref[1], str):
            return
        result, exc = pending
        if exc is None:
            token = ref_token(ref)
            _unavailable(lambda: self._nodes.complete(broker, ref[0], ref[1], result, None, token))
        elif isinstance(exc, ActorNotFound):  # Retries cannot retry what has no actor
            _unavailable(
                lambda: self._nodes.fail(
                    broker, ref[0], ref[1], message.actor_name, exc, ref_token(ref)
                )
            )
        self._settled()

    def before_nack(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        """dramatiq gave up on the message: the node has failed."""
        ref = message.options.get(OPTION)
        if ref is None or isinstance(ref[1], str):
            return
        pending = self._pending(message)
        # never processed (unknown actor): dramatiq stuffed the reason into the message
        exc = pending[1] if pending is not None else failure_of(message)
        token = ref_token(ref)
        _unavailable(
            lambda: self._nodes.fail(broker, ref[0], ref[1], message.actor_name, exc, token)
        )
        self._settled()

    def before_worker_boot(self, broker: dramatiq.Broker, worker: Worker) -> None:
        """Refuse an evicting Redis; on a RedisBroker of the store's Redis, let
        ``complete.lua`` ack successes.

        Also logs, once, why workflows fall back to ready mode if dramatiq's encoder is not
        one the scripts can write (see ``direct_mode``).
        """
        check: Callable[[], None] | None = getattr(self.store, "check_eviction", None)
        if check is not None:
            try:
                check()
            except ConfigurationError as exc:
                raise _Refused(str(exc)) from exc
            except StoreUnavailable as exc:
                logger.warning("Could not read Redis's maxmemory-policy at boot: %s", exc)
        self._acks.install(self.store, broker)
        direct_mode(self.store, broker)

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Worker) -> None:
        """Start this process's reconciler thread."""
        self._reconciler.start(broker)

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Worker) -> None:
        """Stop the reconciler thread."""
        self._reconciler.stop()

    def reconcile_once(self, broker: dramatiq.Broker | None = None, *, limit: int = 500) -> int:
        """One reconciler sweep: re-enqueue released nodes nobody claimed in time.

        Returns:
            How many nodes or callbacks were handed out again.
        """
        return self._reconciler.sweep(broker, limit=limit)


def find_store(broker: dramatiq.Broker) -> StoreBackend | None:
    """The store of the broker's WorkflowMiddleware, if it has one."""
    for m in broker.middleware:
        if isinstance(m, WorkflowMiddleware):
            return m.store
    return None
