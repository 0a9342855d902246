"""Cost of metrics and tracing on the task path: the same shapes with each part on and off.

    python bench/observe.py [--repeats N]
    python bench/observe.py --hooks      # the hooks of one node with both parts off, timed alone

Each measurement runs in its own subprocess (an OpenTelemetry ``TracerProvider`` is set once
per process) against one private redis-server: RedisBroker + RedisStore (direct mode), one
in-process ``dramatiq.Worker`` with 8 threads, no-op actors. Modes:

* ``off``: neither part active (the extras may be installed: no provider, no Prometheus).
* ``otel``: the SDK ``TracerProvider`` with a ``BatchSpanProcessor`` and an exporter that
  drops the spans (the cost of making and processing spans, not of shipping them), the
  workflow submitted under a caller span.
* ``prom``: dramatiq's ``Prometheus`` middleware on the broker, its ``after_process_boot`` run
  by hand (the CLI runs it), so values go to multiprocess files as in a CLI worker.
* ``both``.

Modes alternate within each repeat; ratios are taken within a repeat and reported as medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

MODES = ("off", "otel", "prom", "both")
SHAPES = ("chain40", "group200")


def _canvas(shape: str, t: Any) -> Any:
    from aioworkflow import Chain, Group

    if shape == "chain40":
        return Chain(*(t.message() for _ in range(40)))
    return Chain(t.message(), Group(*(t.message() for _ in range(200))), t.message())


def child(mode: str, url: str, shape: str, runs: int) -> None:
    """Measure one mode in this process; print tasks/s as JSON."""
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    from aioworkflow import RedisStore, Workflow, WorkflowMiddleware

    broker = RedisBroker(url=url)  # type: ignore[no-untyped-call]
    broker.add_middleware(WorkflowMiddleware(RedisStore(url=url)))
    caller: Any = None
    if mode in ("prom", "both"):
        from dramatiq.middleware.prometheus import Prometheus

        prom = Prometheus()
        broker.add_middleware(prom)
        prom.after_process_boot(broker)  # type: ignore[no-untyped-call]
    if mode in ("otel", "both"):
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

        class Drop(SpanExporter):
            def export(self, spans: Any) -> Any:
                from opentelemetry.sdk.trace.export import SpanExportResult

                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Drop()))
        trace.set_tracer_provider(provider)
        caller = trace.get_tracer("bench")
    dramatiq.set_broker(broker)
    done = threading.Semaphore(0)

    @dramatiq.actor(max_retries=0)
    def t() -> None:
        done.release()

    worker = dramatiq.Worker(broker, worker_threads=8, worker_timeout=100)
    worker.start()
    n = 40 if shape == "chain40" else 202

    async def once() -> float:
        t0 = time.perf_counter()
        if caller is not None:
            with caller.start_as_current_span("caller"):
                handle = await Workflow(_canvas(shape, t)).run()
        else:
            handle = await Workflow(_canvas(shape, t)).run()
        await handle.wait(timeout=120)
        return time.perf_counter() - t0

    async def main() -> list[float]:
        await once()  # warm up: connections, scripts, imports, lazy observability set-up
        return [n / await once() for _ in range(runs)]

    rates = asyncio.run(main())
    worker.stop()
    broker.close()
    print(json.dumps(statistics.median(rates)))


def hooks() -> None:
    """Time the observer hooks of one node (claimed, ran, completed) with both parts off."""
    import timeit

    import dramatiq
    from dramatiq.broker import MessageProxy
    from dramatiq.brokers.stub import StubBroker
    from dramatiq.message import Message

    from aioworkflow import Chain, MemoryStore, WorkflowMiddleware, compile
    from aioworkflow._context import WorkflowContext
    from aioworkflow._machine import Outcome, State
    from aioworkflow._observe import Observer
    from aioworkflow._protocol import Completion
    from aioworkflow._store._base import Loaded

    broker = StubBroker()
    broker.add_middleware(WorkflowMiddleware(MemoryStore()))
    t: Any = dramatiq.actor(actor_name="t", broker=broker)(lambda: None)
    dag = compile(Chain(t.message(), t.message()))
    ctx = WorkflowContext(Loaded(dag, "r", []), route=None, keep=frozenset())  # type: ignore[arg-type]
    message = MessageProxy(Message(queue_name="default", actor_name="t", args=(), kwargs={},
                                   options={"aiowf": ["x", 1]}))  # fmt: skip
    observer = Observer()
    done = Completion(Outcome.APPLIED, State.RUNNING, ())

    def node() -> None:
        observer.claimed(broker, message, ctx, 1)
        observer.ran(message, None)
        observer.completed(ctx, 1, done)

    node()  # the one-time set-up (finds no Prometheus middleware and no provider)
    n = 200_000
    best = min(timeit.repeat(node, number=n, repeat=5)) / n
    print(f"observer hooks of one node, both parts off: {best * 1e9:.0f} ns")


def _redis() -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not on PATH")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, "--port", str(port), "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL)  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    for _ in range(100):
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    return proc, url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--runs", type=int, default=5, help="workflows per measurement")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "URL", "SHAPE"))
    parser.add_argument("--hooks", action="store_true", help=hooks.__doc__)
    args = parser.parse_args()
    if args.hooks:
        hooks()
        return
    if args.child:
        mode, url, shape = args.child
        child(mode, url, shape, args.runs)
        return
    server, url = _redis()
    ratios: dict[tuple[str, str], list[float]] = {}
    rates: dict[tuple[str, str], list[float]] = {}
    try:
        with tempfile.TemporaryDirectory() as db:
            env = {**os.environ, "dramatiq_prom_db": db}
            for r in range(args.repeats):
                for shape in SHAPES:
                    got: dict[str, float] = {}
                    order = MODES if r % 2 == 0 else tuple(reversed(MODES))
                    for mode in order:
                        out = subprocess.run(
                            [sys.executable, __file__, "--runs", str(args.runs),
                             "--child", mode, url, shape],
                            env=env, capture_output=True, text=True, check=True,
                        )  # fmt: skip
                        got[mode] = float(out.stdout.strip().splitlines()[-1])
                        rates.setdefault((shape, mode), []).append(got[mode])
                    for mode in MODES:
                        ratios.setdefault((shape, mode), []).append(got[mode] / got["off"])
    finally:
        server.terminate()
        server.wait()
    print(f"{'shape':<10} {'mode':<5} {'tasks/s':>8} {'vs off (median [min-max])':>28}")
    for (shape, mode), values in ratios.items():
        rate = statistics.median(rates[(shape, mode)])
        print(f"{shape:<10} {mode:<5} {rate:8.0f}   {statistics.median(values):.2f} "
              f"[{min(values):.2f}-{max(values):.2f}]")  # fmt: skip


if __name__ == "__main__":
    main()
