"""OpenTelemetry: one trace per workflow, a CONSUMER span per node run, links to predecessors.

The SDK's in-memory exporter collects the spans of ``Chain(a, Group(b, c), d)`` run in every
environment of ``env``; a fixture installs the SDK ``TracerProvider`` as the global one for the
test and removes it afterwards (OpenTelemetry sets it once per process, so the fixture resets
the API's module globals, as OpenTelemetry's own tests do).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from aioworkflow import Chain, Group, State, Workflow

trace = pytest.importorskip("opentelemetry.trace")
sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util._once import Once

from aioworkflow._observe._tracing import span_id_of

if TYPE_CHECKING:
    from collections.abc import Iterator

    from opentelemetry.sdk.trace import ReadableSpan

    from tests.conftest import Env


def _set_provider(provider: Any) -> None:
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    if provider is not None:
        trace.set_tracer_provider(provider)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _set_provider(provider)
    yield exporter
    _set_provider(None)
    provider.shutdown()


def _inner_by_name(found: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    out: dict[str, ReadableSpan] = {}
    for s in found:
        if s.kind is SpanKind.CONSUMER:
            continue
        assert s.name not in out, f"one span named {s.name}"
        out[s.name] = s
    return out


async def test_a_workflow_is_one_trace_with_a_consumer_span_per_node(
    env: Env, spans: InMemorySpanExporter
) -> None:
    # Given actors that open spans of their own (one of them async)
    tracer = trace.get_tracer("tests")

    def task(label: str) -> None:
        with tracer.start_as_current_span(f"inner {label}"):
            pass

    async def atask(label: str) -> None:
        with tracer.start_as_current_span(f"inner {label}"):
            pass

    t = env.actor(task, actor_name=f"traced_{env.name}")
    at = env.actor(atask, actor_name=f"atraced_{env.name}")
    env.worker()
    # When Chain(a, Group(b, c), d) runs under the caller's span
    with tracer.start_as_current_span("caller") as caller:
        handle = await Workflow(
            Chain(t.message("a"), Group(at.message("b"), t.message("c")), t.message("d"))
        ).run()
    assert (await handle.wait(timeout=30)).state is State.SUCCEEDED
    finished = tuple(spans.get_finished_spans())
    found = _inner_by_name(finished)
    root = caller.get_span_context()
    # Then every node span is a CONSUMER child of the caller's span, in its trace
    nodes = {int((s.attributes or {})["aioworkflow.node"]): s for s in finished  # type: ignore[arg-type]
             if s.kind is SpanKind.CONSUMER}  # fmt: skip
    assert sorted(nodes) == [0, 1, 2, 3]
    label = {0: "a", 1: "b", 2: "c", 3: "d"}
    for node, span in nodes.items():
        assert span.kind is SpanKind.CONSUMER
        assert span.context.trace_id == root.trace_id
        assert span.parent is not None
        assert span.parent.span_id == root.span_id
        attrs = span.attributes or {}
        assert attrs["messaging.system"] == "dramatiq"
        assert attrs["messaging.operation.type"] == "process"
        assert attrs["messaging.destination.name"] == "default"
        assert attrs["messaging.message.id"]
        assert attrs["aioworkflow.workflow.id"] == handle.id
        assert attrs["aioworkflow.attempt"] == 1
        # and the actor's own span nests inside its node's span
        inner = found[f"inner {label[node]}"]
        assert inner.parent is not None
        assert inner.parent.span_id == span.context.span_id
        # and its id is the derived one its successors link to
        assert span.context.span_id == span_id_of(root.trace_id, handle.id, node, 0)

    # and each node links to its predecessors' spans
    def links(node: int) -> set[int]:
        return {link.context.span_id for link in nodes[node].links}

    assert links(0) == set()
    assert links(1) == links(2) == {nodes[0].context.span_id}
    assert links(3) == {nodes[1].context.span_id, nodes[2].context.span_id}


async def test_a_failed_node_records_its_exception_and_an_error_status(
    env: Env, spans: InMemorySpanExporter
) -> None:
    # Given an actor that raises, with no retries
    def boom() -> None:
        raise RuntimeError("kaput")

    b = env.actor(boom, actor_name=f"boom_{env.name}", max_retries=0)
    env.worker()
    # When it runs as a workflow (outside any span: the workflow gets a root span of its own)
    handle = await Workflow(Chain(b.message())).run()
    assert (await handle.wait(timeout=30)).state is State.FAILED
    # Then its span has the exception event and an ERROR status
    node = next(s for s in spans.get_finished_spans() if s.kind is SpanKind.CONSUMER)
    assert node.status.status_code is StatusCode.ERROR
    events = [e for e in node.events if e.name == "exception"]
    assert events
    assert (events[0].attributes or {})["exception.type"] == "RuntimeError"
    root = next(s for s in spans.get_finished_spans() if s.name == "aioworkflow run")
    assert node.parent is not None
    assert node.parent.span_id == root.context.span_id


async def test_without_a_provider_nothing_is_traced(env: Env) -> None:
    # Given no TracerProvider: the workflow stores no traceparent and runs as usual
    t = env.actor(lambda: None, actor_name=f"untraced_{env.name}")
    env.worker()
    handle = await Workflow(Chain(t.message())).run()
    assert (await handle.wait(timeout=30)).state is State.SUCCEEDED
    loaded = await env.store.aio().load(handle.id)
    assert loaded.trace == ""
