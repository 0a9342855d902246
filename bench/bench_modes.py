"""Ready mode vs direct mode on ``Chain(t, Group(width), t)``, in one run. Printed figures.

    AIOWORKFLOW_TEST_RABBITMQ_URL=amqp://... python bench/bench_modes.py [--width 10000]

Direct: RedisBroker on the store's Redis (the scripts push into dramatiq's queues). Ready:
RabbitmqBroker (the scripts fill the ready set, the worker that completed ``t`` enqueues the
released nodes through the broker, the reconciler sends what it leaves behind). One private
redis-server for both, one in-process dramatiq Worker (8 threads) per mode; wall time from
``run()`` to ``wait()``. Target (issue 13): ready within 1.5x of direct.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AsyncIO

from aioworkflow import Chain, Group, RedisStore, Workflow, WorkflowMiddleware
from bench.bench_wide import start_redis


def run_mode(mode: str, redis_url: str, amqp_url: str, width: int) -> float:
    """Seconds from submit to SUCCEEDED of ``Chain(t, Group(width), t)`` in ``mode``."""
    broker: dramatiq.Broker
    if mode == "direct":
        broker = RedisBroker(url=redis_url)  # type: ignore[no-untyped-call]
    else:
        broker = RabbitmqBroker(url=amqp_url)
        broker.flush_all()
    store = RedisStore(url=redis_url)
    broker.add_middleware(AsyncIO())
    broker.add_middleware(WorkflowMiddleware(store))
    dramatiq.set_broker(broker)

    @dramatiq.actor(broker=broker, queue_name=f"bench_{mode}", max_retries=0)
    def step(i: int) -> None:
        """A trivial task."""

    worker = dramatiq.Worker(broker, worker_threads=8, worker_timeout=100)
    worker.start()

    async def go() -> float:
        canvas = Chain(step.message(-1), Group(*(step.message(i) for i in range(width))),
                       step.message(-2))  # fmt: skip
        t0 = time.perf_counter()
        handle = await Workflow(canvas).run()
        status = await handle.wait(timeout=600)
        elapsed = time.perf_counter() - t0
        assert str(status.state) == "SUCCEEDED", status
        return elapsed

    try:
        return asyncio.run(go())
    finally:
        worker.stop()
        if mode == "ready":
            broker.flush_all()
        broker.close()
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--width", type=int, default=10_000)
    width = parser.parse_args().width
    amqp = os.environ.get("AIOWORKFLOW_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_redis(tmp)
        try:
            times: dict[str, Any] = {}
            for mode in ("direct", "ready"):
                times[mode] = run_mode(mode, url, amqp, width)
                print(f"{mode:<7} Chain(t, Group({width:,}), t): {times[mode]:7.2f} s")
            print(f"ready / direct: {times['ready'] / times['direct']:.2f}x (target <= 1.5x)")
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
