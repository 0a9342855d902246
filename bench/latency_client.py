"""Client latency under load: pending waits and many small concurrent workflows (issue 15).

    python bench/latency_client.py [--waits 1000,10000] [--workflows 5000] [--samples 50]

Starts a private redis-server (``--save "" --appendonly no``) unless ``--url`` is given, a
RedisBroker + RedisStore (direct mode) and one in-process dramatiq worker (8 threads).

* ``waits``: for each count N, N pending ``wait()`` calls on one event loop (10 on each of
  N/10 workflows whose one step sits in a queue no worker consumes), then ``samples`` times
  ``run()`` + ``wait()`` + ``status()`` of another one-step workflow, one after the other:
  p50/p99 of each call and of the three together.
* ``concurrent``: ``workflows`` two-step chains submitted at once from one event loop, each
  then waited for: p50/p99 of ``run()`` and of submit-to-done.

``client_cases`` is the entry point other benchmarks call (bench/latency.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AsyncIO

from aioworkflow import Chain, RedisStore, State, Workflow, WorkflowMiddleware


def _pct(values: list[float]) -> dict[str, float]:
    """p50/p99/max in milliseconds."""
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(p99 * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def _registered(store: RedisStore) -> int:
    waits: Any = store.aio()._waits
    if waits is None:  # Redis Cluster: no multiplexing
        return -1
    return sum(len(ws) for shard in waits._shards for ws in shard._waiters.values())


async def _with_waits(
    store: RedisStore, broker: dramatiq.Broker, parked: Any, fast: Any, n: int, samples: int
) -> dict[str, Any]:
    gate = asyncio.Semaphore(64)

    async def park() -> Any:
        async with gate:
            return await Workflow(parked.message()).run(broker=broker, store=store)

    handles = await asyncio.gather(*(park() for _ in range(max(1, n // 10))))
    tasks = [asyncio.create_task(h.wait(timeout=3600)) for h in handles for _ in range(10)]
    deadline = time.monotonic() + 300
    while True:  # every wait registered with the readers (a cheap poll of local state)
        if _registered(store) in (len(tasks), -1) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    runs, waits, statuses, total = [], [], [], []
    try:
        for _ in range(samples):
            t0 = time.perf_counter()
            h = await Workflow(fast.message()).run(broker=broker, store=store)
            t1 = time.perf_counter()
            done = await h.wait(timeout=60)
            t2 = time.perf_counter()
            await h.status()
            t3 = time.perf_counter()
            assert done.state is State.SUCCEEDED, done
            runs.append(t1 - t0)
            waits.append(t2 - t1)
            statuses.append(t3 - t2)
            total.append(t3 - t0)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for h in handles:
            await h.cancel()
    return {
        "pending_waits": len(tasks),
        "run": _pct(runs),
        "wait": _pct(waits),
        "status": _pct(statuses),
        "run_wait_status": _pct(total),
    }


async def _concurrent(
    store: RedisStore, broker: dramatiq.Broker, fast: Any, n: int
) -> dict[str, Any]:
    submits: list[float] = []
    dones: list[float] = []

    async def one() -> None:
        t0 = time.perf_counter()
        h = await Workflow(Chain(fast.message(), fast.message())).run(broker=broker, store=store)
        submits.append(time.perf_counter() - t0)
        status = await h.wait(timeout=600)
        assert status.state is State.SUCCEEDED, status
        dones.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    wall = time.perf_counter() - t0
    return {
        "workflows": n,
        "wall_s": round(wall, 3),
        "tasks_per_s": round(2 * n / wall, 1),
        "run": _pct(submits),
        "submit_to_done": _pct(dones),
    }


def _noop(*args: Any) -> None:
    """A task that does nothing."""


async def client_cases(
    url: str,
    *,
    waits: tuple[int, ...] = (1000, 10_000),
    workflows: int = 5000,
    samples: int = 50,
    threads: int = 8,
) -> dict[str, Any]:
    """Measure the client's latency cases on the Redis at ``url`` (flushes nothing; its own
    actors and queues have unique names). Returns ``{"waits": [...], "concurrent": {...}}``."""
    broker = RedisBroker(url=url)  # type: ignore[no-untyped-call]
    broker.add_middleware(AsyncIO())
    store = RedisStore(url=url)
    broker.add_middleware(WorkflowMiddleware(store))
    tag = uuid.uuid4().hex[:8]
    parked = dramatiq.actor(
        broker=broker, actor_name=f"lat_parked_{tag}", queue_name=f"lat_parked_{tag}"
    )(_noop)
    fast = dramatiq.actor(
        broker=broker, actor_name=f"lat_fast_{tag}", queue_name=f"lat_fast_{tag}"
    )(_noop)
    worker = dramatiq.Worker(
        broker, queues={f"lat_fast_{tag}"}, worker_threads=threads, worker_timeout=100
    )
    worker.start()
    try:
        out: dict[str, Any] = {"waits": []}
        for n in waits:
            out["waits"].append(await _with_waits(store, broker, parked, fast, n, samples))
        if workflows:
            out["concurrent"] = await _concurrent(store, broker, fast, workflows)
        return out
    finally:
        worker.stop()
        await store.aclose()
        store.close()
        broker.close()


def _start_redis() -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not on PATH")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", tempfile.mkdtemp(prefix="aiowf-lat-")],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            return proc, url
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="Redis URL (default: a private redis-server)")
    parser.add_argument("--waits", default="1000,10000", help="pending wait() counts")
    parser.add_argument("--workflows", type=int, default=5000)
    parser.add_argument("--samples", type=int, default=50)
    args = parser.parse_args()
    proc = None
    url = args.url
    if url is None:
        proc, url = _start_redis()
    try:
        counts = tuple(int(x) for x in args.waits.split(",") if x)
        result = asyncio.run(
            client_cases(url, waits=counts, workflows=args.workflows, samples=args.samples)
        )
        print(json.dumps(result, indent=2))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
