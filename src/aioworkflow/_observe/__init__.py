"""Metrics (Prometheus) and tracing (OpenTelemetry) of workflow nodes, with no switch of its own.

Both parts are optional extras, imported lazily, so the core never depends on them:

* **Metrics** (``aioworkflow[prometheus]``) turn on in a worker whose broker has dramatiq's own
  ``Prometheus`` middleware; they are created at the first workflow message the process sees
  (after every boot hook, whatever the middleware order) in dramatiq's multiprocess directory,
  so dramatiq's exposition server serves them next to its ``dramatiq_*`` series. See
  :mod:`._metrics`.
* **Tracing** (``aioworkflow[otel]``) follows OpenTelemetry's global ``TracerProvider``: a
  workflow submitted while one is set stores its root span context once (``traceparent`` in
  the meta hash) and every node run becomes a CONSUMER span in that trace. See
  :mod:`._tracing`.

:class:`Observer` is what the worker path calls: one instance per ``NodeOps``, four hooks
(``claimed``, ``ran``, ``completed``, ``failed``). With neither part active each hook costs an
attribute test or two (the 5% budget of the task path, README "Observability").
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, final

if TYPE_CHECKING:
    import dramatiq
    from dramatiq.broker import MessageProxy

    from aioworkflow._context import WorkflowContext
    from aioworkflow._protocol import Completion

    from ._metrics import Metrics
    from ._tracing import NodeTracer

__all__ = ["Observer", "current_traceparent"]


#: Whether OpenTelemetry turned out to be missing (a failed import is not cached by Python).
_no_otel = False


def current_traceparent() -> str:
    """The W3C ``traceparent`` a new workflow's node spans descend from ("": no tracing).

    "" when OpenTelemetry is not installed or no ``TracerProvider`` is set.
    """
    global _no_otel  # a process-wide fact, set once
    if _no_otel:
        return ""
    try:
        from ._tracing import workflow_root
    except ImportError:
        _no_otel = True
        return ""
    return workflow_root()


def _tracer() -> NodeTracer | None:
    try:
        from ._tracing import NodeTracer
    except ImportError:
        return None
    return NodeTracer()


@final
class Observer:
    """The observability hooks of one worker's ``NodeOps`` (thread-safe).

    What a node run started in ``claimed`` is kept per worker thread until ``ran`` (dramatiq
    runs ``before_process_message``, the actor and ``after_process_message`` of one delivery
    on one worker thread).
    """

    def __init__(self) -> None:
        self._ready = False
        self._lock = threading.Lock()
        self.metrics: Metrics | None = None
        self.tracer: NodeTracer | None = None
        self._local = threading.local()

    def _setup(self, broker: dramatiq.Broker) -> None:
        with self._lock:
            if self._ready:
                return
            from ._metrics import metrics_for

            self.metrics = metrics_for(broker)
            self.tracer = _tracer()
            self._ready = True

    def claimed(
        self, broker: dramatiq.Broker, message: MessageProxy, ctx: WorkflowContext, node: object
    ) -> None:
        """A delivery was claimed and its actor is about to run (callbacks are not observed)."""
        if not self._ready:
            self._setup(broker)
        metrics, tracer = self.metrics, self.tracer
        if metrics is None and (tracer is None or not ctx.loaded.trace):
            return
        if not isinstance(node, int):  # a callback ("s"/"f"): not a node of the DAG
            return
        span = None
        if tracer is not None and ctx.loaded.trace:
            span = tracer.start(message, ctx, node)
        start = metrics.claimed(message, ctx, node) if metrics is not None else 0.0
        self._local.run = (message, start, span)

    def ran(self, message: MessageProxy, exception: BaseException | None) -> None:
        """The actor of a claimed delivery returned or raised (or the delivery was skipped)."""
        run: tuple[MessageProxy, float, Any] | None = getattr(self._local, "run", None)
        if run is None or run[0] is not message:
            return
        self._local.run = None
        if self.metrics is not None:
            self.metrics.ran(message, run[1], exception)
        if run[2] is not None and self.tracer is not None:
            self.tracer.end(run[2], exception)

    def completed(self, ctx: WorkflowContext, node: int, done: Completion) -> None:
        """The node's success was counted by the store."""
        if self.metrics is not None:
            self.metrics.settled(ctx, node, done, "succeeded")

    def failed(self, ctx: WorkflowContext, node: int, done: Completion) -> None:
        """The node's final failure was counted by the store."""
        if self.metrics is not None:
            self.metrics.settled(ctx, node, done, "failed")
