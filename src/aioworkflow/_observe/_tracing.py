"""OpenTelemetry spans of workflow nodes: one trace per workflow, one CONSUMER span per run.

Theory of operation
-------------------
*Root.* ``run()`` captures the caller's current span (or, when there is none, starts and ends a
PRODUCER span ``aioworkflow run`` as the root) and stores its W3C ``traceparent`` once, in the
workflow's meta hash (``MetaField.TRACE``). Workers read it with the rest of the workflow when
they load it into their per-process cache, so messages carry nothing more and their size stays
constant. Without a ``TracerProvider`` at ``run()`` nothing is stored and the workflow is not
traced.

*Node runs.* ``before_process_message`` (after the claim) starts a span of kind CONSUMER, child
of the root, and makes it current on the worker thread until ``after_process_message``: the
actor's own spans nest inside it (an async actor runs in a task created from that context).
Attributes follow the messaging semantic conventions (``messaging.system`` "dramatiq",
``messaging.destination.name``, ``messaging.message.id``, ``messaging.operation.type``
"process") plus ``aioworkflow.workflow.id``, ``aioworkflow.node``, ``aioworkflow.actor`` and
``aioworkflow.attempt`` (1 for the first). A failed attempt records its exception and an ERROR
status.

*Links without round trips.* A node's span links to its predecessors' spans. Their span ids are
not fetched (that would cost a read per claim, or a write per completion in the scripts): they
are derived. The span of attempt ``k`` of node ``n`` has the id
``blake2b(trace id, workflow id, n, k)[:8]``, set through the id generator of aioworkflow's own
SDK ``Tracer`` (a thread-local override, used for this one span only, so the user's spans keep
the provider's generator). A successor links to attempt 0 of each predecessor: it cannot know,
without asking the store, which attempt succeeded, so after a retry the link points at the
first (failed) attempt, a sibling of the successful one in the same trace. With a provider that
is not the SDK's (no id generator to steer), spans carry no links.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, final

from opentelemetry import context, trace
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from aioworkflow._upload import OPTION

if TYPE_CHECKING:
    from dramatiq.broker import MessageProxy

    from aioworkflow._context import WorkflowContext
    from aioworkflow._dag import Dag

__all__ = ["NodeTracer", "span_id_of", "workflow_root"]

_NAME = "aioworkflow"


def workflow_root() -> str:
    """The ``traceparent`` of the current span (or a new root span); "" with no provider."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider):
        return ""
    found = trace.get_current_span().get_span_context()
    if not found.is_valid:
        span = provider.get_tracer(_NAME).start_span("aioworkflow run", kind=SpanKind.PRODUCER)
        span.end()
        found = span.get_span_context()
        if not found.is_valid:
            return ""
    return f"00-{found.trace_id:032x}-{found.span_id:016x}-{int(found.trace_flags):02x}"


def span_id_of(trace_id: int, workflow_id: str, node: int, attempt: int) -> int:
    """The derived span id of attempt ``attempt`` (0 first) of ``node``'s run."""
    key = f"{trace_id:032x}/{workflow_id}/{node}/{attempt}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") or 1


class _Ids:
    """An SDK id generator that yields a chosen span id once, on the thread that chose it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.local = threading.local()

    def generate_span_id(self) -> int:
        chosen: int | None = getattr(self.local, "next", None)
        if chosen is not None:
            self.local.next = None
            return chosen
        return int(self.inner.generate_span_id())

    def generate_trace_id(self) -> int:
        return int(self.inner.generate_trace_id())


def _predecessors(dag: Dag) -> list[list[int]]:
    preds: list[list[int]] = [[] for _ in range(len(dag))]
    for i in range(len(dag)):
        for j in dag.task_successors(i):
            preds[j].append(i)
    return preds


@final
class NodeTracer:
    """Starts and ends node spans with the global ``TracerProvider`` of the moment."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._provider: object = None
        self._tracer: Any = None
        self._ids: _Ids | None = None
        self._preds: OrderedDict[str, list[list[int]]] = OrderedDict()

    def _current(self) -> tuple[Any, _Ids | None]:
        provider = trace.get_tracer_provider()
        with self._lock:
            if provider is not self._provider:
                tracer: Any = provider.get_tracer(_NAME)
                inner = getattr(tracer, "id_generator", None)
                self._ids = _Ids(inner) if inner is not None else None
                if self._ids is not None:
                    tracer.id_generator = self._ids  # this SDK Tracer instance is ours alone
                self._provider, self._tracer = provider, tracer
            return self._tracer, self._ids

    def _predecessors(self, workflow_id: str, dag: Dag, node: int) -> list[int]:
        with self._lock:
            preds = self._preds.get(workflow_id)
            if preds is not None:
                self._preds.move_to_end(workflow_id)
        if preds is None:
            preds = _predecessors(dag)
            with self._lock:
                self._preds[workflow_id] = preds
                while len(self._preds) > 256:
                    self._preds.popitem(last=False)
        return preds[node]

    def start(self, message: MessageProxy, ctx: WorkflowContext, node: int) -> Any:
        """Start the node's span and make it current on this thread."""
        tracer, ids = self._current()
        _, trace_hex, parent_hex, flags_hex = ctx.loaded.trace.split("-")
        trace_id, flags = int(trace_hex, 16), TraceFlags(int(flags_hex, 16))
        parent = SpanContext(trace_id, int(parent_hex, 16), is_remote=True, trace_flags=flags)
        workflow_id: str = message.options[OPTION][0]
        retries: int = message.options.get("retries", 0)
        links: list[Link] = []
        if ids is not None:
            links = [
                Link(SpanContext(trace_id, span_id_of(trace_id, workflow_id, p, 0), True, flags))
                for p in self._predecessors(workflow_id, ctx.loaded.dag, node)
            ]
            ids.local.next = span_id_of(trace_id, workflow_id, node, retries)
        attributes = {
            "messaging.system": "dramatiq",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": message.queue_name,
            "messaging.message.id": message.message_id,
            "aioworkflow.workflow.id": workflow_id,
            "aioworkflow.node": node,
            "aioworkflow.actor": message.actor_name,
            "aioworkflow.attempt": retries + 1,
        }
        try:
            span = tracer.start_span(
                f"process {message.actor_name}",
                context=trace.set_span_in_context(trace.NonRecordingSpan(parent)),
                kind=SpanKind.CONSUMER,
                attributes=attributes,
                links=links,
            )
        finally:
            if ids is not None:
                ids.local.next = None
        return span, context.attach(trace.set_span_in_context(span))

    def end(self, run: Any, exception: BaseException | None) -> None:
        """End a span started by :meth:`start` (on the same thread), recording a failure."""
        span, token = run
        if exception is not None:
            span.record_exception(exception)
            span.set_status(Status(StatusCode.ERROR, f"{type(exception).__name__}: {exception}"))
        span.end()
        context.detach(token)
