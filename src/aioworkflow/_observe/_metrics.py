"""Prometheus metrics of workflows, served by dramatiq's own ``Prometheus`` exposition server.

How they reach the endpoint: dramatiq's ``Prometheus`` middleware points
``PROMETHEUS_MULTIPROC_DIR`` at its database directory in ``after_process_boot`` and only then
imports ``prometheus_client`` (which picks its multiprocess value class at import); its forked
exposition server merges every process's files with a ``MultiProcessCollector``. These
metrics are created the same way, in a private registry, but lazily at the first workflow
message of the process: by then every boot hook has run, whatever the order of the two
middlewares on the broker, and values recorded in each worker process land in files of that
directory, exactly as dramatiq's own ``dramatiq_*`` series do. Without the ``Prometheus``
middleware on the broker (or without ``prometheus_client``) nothing is created.

Series (labels ``queue_name`` and ``actor_name`` like dramatiq's, times in milliseconds like
``dramatiq_message_duration_milliseconds``):

* ``aioworkflow_workflows_total{state}``: workflows that reached SUCCEEDED or FAILED, counted
  by the worker whose completion or failure ended them. A cancel (client side) is not counted;
  a workflow in which several nodes fail for good at the same time is counted once per such
  failure (the fail script's reply does not say whether this call moved the state).
* ``aioworkflow_workflows_running``: workflows started minus finished, as seen by workers: +1
  at the first claim of a workflow's first root (attempt 0), -1 when counted above. It is an
  estimate (cancelled workflows stay counted until the workers restart with a fresh directory).
* ``aioworkflow_node_duration_milliseconds``: run time of each attempt (claim to return).
* ``aioworkflow_node_wait_milliseconds``: from release to start. The release time is the
  message's own ``message_timestamp``, i.e. when it was enqueued: the moment the releasing
  script pushed it (direct mode) or the worker or reconciler enqueued it (ready mode). A delayed
  node's wait includes its delay.
* ``aioworkflow_nodes_total{outcome}``: node attempts that raised (``error``), and nodes that
  succeeded (``succeeded``) or failed for good (``failed``).
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Any, final

from aioworkflow._machine import Outcome, State

if TYPE_CHECKING:
    import dramatiq
    from dramatiq.broker import MessageProxy

    from aioworkflow._context import WorkflowContext
    from aioworkflow._protocol import Completion

__all__ = ["Metrics", "metrics_for"]

#: dramatiq's buckets of ``dramatiq_message_duration_milliseconds``.
BUCKETS = (5, 10, 25, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000, 30000, 60000,
           600000, 900000, float("inf"))  # fmt: skip


def metrics_for(broker: dramatiq.Broker) -> Metrics | None:
    """The metrics of this process, if the broker exports dramatiq's (None: no metrics)."""
    # only if already imported: importing it creates dramatiq's database directory
    prometheus: Any = sys.modules.get("dramatiq.middleware.prometheus")
    if prometheus is None:
        return None
    if not any(isinstance(m, prometheus.Prometheus) for m in broker.middleware):
        return None
    # dramatiq sets these in after_process_boot; set them again in case this runs first
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = prometheus.DB_PATH
    os.environ["prometheus_multiproc_dir"] = prometheus.DB_PATH  # noqa: SIM112 - as dramatiq
    try:
        return Metrics()
    except ImportError:
        return None


@final
class Metrics:
    """The ``aioworkflow_*`` collectors of one process (imports ``prometheus_client``)."""

    def __init__(self) -> None:
        import prometheus_client as prom

        registry = prom.CollectorRegistry()
        node = ["queue_name", "actor_name"]
        self.workflows = prom.Counter(
            "aioworkflow_workflows_total", "Workflows that reached a final state.",
            ["state"], registry=registry,
        )  # fmt: skip
        self.running = prom.Gauge(
            "aioworkflow_workflows_running", "Workflows started and not finished (estimate).",
            registry=registry, multiprocess_mode="sum",
        )  # fmt: skip
        self.durations = prom.Histogram(
            "aioworkflow_node_duration_milliseconds", "Run time of workflow node attempts.",
            node, buckets=BUCKETS, registry=registry,
        )  # fmt: skip
        self.waits = prom.Histogram(
            "aioworkflow_node_wait_milliseconds",
            "Time from a node's release (its message's enqueue time) to its start.",
            node, buckets=BUCKETS, registry=registry,
        )  # fmt: skip
        self.nodes = prom.Counter(
            "aioworkflow_nodes_total", "Workflow node outcomes (error: one attempt raised).",
            [*node, "outcome"], registry=registry,
        )  # fmt: skip

    def claimed(self, message: MessageProxy, ctx: WorkflowContext, node: int) -> float:
        """Record the wait of a claimed node; return its start time (ms)."""
        now = time.time() * 1000
        labels = (message.queue_name, message.actor_name)
        self.waits.labels(*labels).observe(max(0.0, now - message.message_timestamp))
        counts = ctx.loaded.dag.pred_counts
        if counts[node] == 0 and not message.options.get("retries") and counts.index(0) == node:
            self.running.inc()  # the first root's first attempt: the workflow has started
        return now

    def ran(self, message: MessageProxy, start: float, exception: BaseException | None) -> None:
        """Record the run time of an attempt, and its error."""
        labels = (message.queue_name, message.actor_name)
        self.durations.labels(*labels).observe(time.time() * 1000 - start)
        if exception is not None:
            self.nodes.labels(*labels, "error").inc()

    def settled(self, ctx: WorkflowContext, node: int, done: Completion, outcome: str) -> None:
        """Count a node's final outcome, and its workflow's if this call ended it."""
        actor, queue, _ = ctx.loaded.dag.shapes[ctx.loaded.dag.shape_of[node]]
        self.nodes.labels(queue, actor, outcome).inc()
        state = done.state
        if done.status == Outcome.APPLIED and state in (State.SUCCEEDED, State.FAILED):
            self.workflows.labels(str(state)).inc()
            self.running.dec()
