"""The reconciler: a thread per worker process that re-sends released nodes nobody claimed.

In ready mode a worker can die (or the broker refuse a message) between the script that
released a node and the enqueue; the node then waits in its workflow's ready set. Every sweep
asks ``reconcile.lua`` for the entries older than ``age_ms`` and hands them out again (direct
mode: the script pushes them into dramatiq's queues itself). Sweeps of several processes may
overlap: the claim's done bit and duplicate check make a re-sent node run once.
"""

from __future__ import annotations

import logging
import random
import threading
from typing import TYPE_CHECKING, final

import dramatiq

from .errors import StoreUnavailable

if TYPE_CHECKING:
    from ._context import ContextCache
    from ._store._base import StoreBackend

__all__ = ["Reconciler"]

logger = logging.getLogger("aioworkflow")


@final
class Reconciler:
    """Sweeps the store's active workflows (``sweep``), on a daemon thread once started.

    Args:
        store: where workflow state lives.
        contexts: the process's cache of loaded workflows and their routes.
        interval: seconds between sweeps of the thread (0 disables it).
        age_ms: milliseconds a released node may stay unclaimed before it is re-sent.
    """

    def __init__(
        self, store: StoreBackend, contexts: ContextCache, interval: float, age_ms: int
    ) -> None:
        self.store = store
        self.contexts = contexts
        #: Seconds between sweeps of the thread (0: ``start`` does not start it).
        self.interval = interval
        #: Milliseconds a released node may stay unclaimed before it is re-sent.
        self.age_ms = age_ms
        #: The broker the thread was started for (sweeps default to it).
        self.broker: dramatiq.Broker | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, broker: dramatiq.Broker) -> None:
        """Start sweeping every ``interval`` seconds (±20%), unless running or disabled."""
        if self.interval <= 0 or self._thread is not None:
            return
        self._stop.clear()
        self.broker = broker
        self._thread = threading.Thread(
            target=self._loop, name="aioworkflow-reconciler", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (waits up to 10 s for a sweep in progress)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval * random.uniform(0.8, 1.2)):
            try:
                self.sweep()
            except StoreUnavailable as exc:  # a lost, full, busy or failing-over Redis
                logger.warning("Reconciler sweep failed (%s); trying again later.", exc)
            except Exception:
                # a broker error or a bug must not end the thread: the next sweep may succeed
                logger.warning("Reconciler sweep failed; trying again later.", exc_info=True)

    def sweep(self, broker: dramatiq.Broker | None = None, *, limit: int = 500) -> int:
        """One sweep: re-send released nodes older than ``age_ms``. Returns how many."""
        broker = broker or self.broker or dramatiq.get_broker()
        sync = self.store.sync
        sent = 0
        for workflow_id in sync.active(limit):
            ctx = self.contexts.get(broker, workflow_id)
            if ctx is None:
                sync.forget(workflow_id)
                continue
            rec = sync.reconcile(workflow_id, self.age_ms, 1000, ctx.route.queue_keys)
            if rec.status == -1 or (
                rec.state is not None and rec.state.is_final and rec.extra == 0
            ):
                sync.forget(workflow_id)
            if rec.released:
                logger.info(
                    "Reconciler re-sends %s of workflow %s.", list(rec.released), workflow_id
                )
                ctx.route.send(rec.released)
                sent += len(rec.released)
        return sent
