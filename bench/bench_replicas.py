"""Cost of ``RedisStore(replicas=1)``: a group and a chain, with and without ``WAIT 1``.

    python bench/bench_replicas.py [--repeats N] [--group N] [--chain N]

Starts a private primary and one replica on loopback ports (``--save "" --appendonly no``),
an in-process ``dramatiq.Worker`` (8 threads) on a ``RedisBroker`` of the primary (direct
mode), and times, per repeat and setting, one group of ``--group`` tasks and one chain of
``--chain`` tasks from ``run()`` to SUCCEEDED. The two settings alternate inside each repeat;
medians are printed. Both use the worker's wire path (plain TCP).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from aioworkflow import Chain, Group, RedisStore, Workflow, WorkflowMiddleware


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server(*extra: str) -> tuple[subprocess.Popen[bytes], int]:
    port = _port()
    workdir = tempfile.mkdtemp(prefix="aiowf-bench-")
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir, *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port)
    for _ in range(500):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.02)
    client.close()
    return proc, port


def _wait_for_replica(port: int) -> None:
    admin = redis.Redis(port=port)
    while admin.info("replication").get("connected_slaves", 0) < 1:
        time.sleep(0.05)
    admin.close()


async def _time(canvas: Any, broker: dramatiq.Broker, store: RedisStore) -> float:
    t0 = time.perf_counter()
    handle = await Workflow(canvas).run(broker=broker, store=store)
    await handle.wait(timeout=600)
    return time.perf_counter() - t0


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--group", type=int, default=1000)
    ap.add_argument("--chain", type=int, default=200)
    opts = ap.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not on PATH")
    primary, port = _server()
    replica, _ = _server("--replicaof", "127.0.0.1", str(port))
    try:
        _wait_for_replica(port)
        url = f"redis://127.0.0.1:{port}/0"
        results: dict[tuple[str, int], list[float]] = {}
        names = (f"group of {opts.group}", f"chain of {opts.chain}")
        for repeat in range(opts.repeats + 1):  # the first repeat warms up, untimed
            for replicas in (0, 1) if repeat % 2 else (1, 0):
                broker = RedisBroker(url=url)  # type: ignore[no-untyped-call]
                store = RedisStore(url=url, replicas=replicas, replica_timeout=5)
                broker.add_middleware(WorkflowMiddleware(store, reconcile_interval=0))
                dramatiq.set_broker(broker)
                task = dramatiq.actor(broker=broker, actor_name="bench_replicas")(lambda *a: None)
                worker = dramatiq.Worker(broker, worker_threads=8, worker_timeout=100)
                worker.start()
                canvases = (
                    Group(*[task.message() for _ in range(opts.group)]),
                    Chain(*[task.message() for _ in range(opts.chain)]),
                )
                try:
                    for name, canvas in zip(names, canvases, strict=True):
                        took = await _time(canvas, broker, store)
                        if repeat:
                            results.setdefault((name, replicas), []).append(took)
                finally:
                    worker.stop()
                    broker.close()
                    await store.aclose()
                    store.close()
        shapes = names
        for name in shapes:
            base = statistics.median(results[name, 0])
            waited = statistics.median(results[name, 1])
            n = opts.group if name.startswith("group") else opts.chain
            print(
                f"{name}: replicas=0 {base:.2f} s ({n / base:.0f} tasks/s), "
                f"replicas=1 {waited:.2f} s ({n / waited:.0f} tasks/s), x{waited / base:.2f}"
            )
    finally:
        for proc in (replica, primary):
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    asyncio.run(main())
