"""The worker's Redis path: the hand-written wire client against redis-py (with/without hiredis).

    python bench/bench_wire.py [--rounds N] [--group N] [--chain N]

Runs the same workload three ways, each in a fresh subprocess (``AIOWORKFLOW_NO_WIRE=1`` turns
the wire path off; ``BENCH_NO_HIREDIS=1`` hides hiredis from redis-py), alternating the order
over rounds: one private redis-server, a RedisBroker on it (direct mode), one in-process
dramatiq Worker with 8 threads, and per round a Group of ``--group`` tasks then a Chain of
``--chain`` tasks, each timed from submit to SUCCEEDED. Prints tasks/s per shape and variant
(median over rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

if os.environ.get("BENCH_NO_HIREDIS") == "1":
    sys.modules["hiredis"] = None  # type: ignore[assignment]  # redis-py then parses in Python

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {
    "wire": {},
    "redis-py+hiredis": {"AIOWORKFLOW_NO_WIRE": "1"},
    "redis-py": {"AIOWORKFLOW_NO_WIRE": "1", "BENCH_NO_HIREDIS": "1"},
}


def child(url: str, group: int, chain: int) -> dict[str, float]:
    """One measurement in this process: tasks/s of a group and of a chain."""
    import asyncio

    import dramatiq
    import redis
    from dramatiq.brokers.redis import RedisBroker

    from aioworkflow import Chain, Group, RedisStore, Workflow, WorkflowMiddleware

    redis.Redis.from_url(url).flushdb()
    broker = RedisBroker(url=url)  # type: ignore[no-untyped-call]
    store = RedisStore(url=url)
    broker.add_middleware(WorkflowMiddleware(store, reconcile_interval=0))
    dramatiq.set_broker(broker)

    @dramatiq.actor(broker=broker, max_retries=0)
    def task(i: int) -> None:
        pass

    hiredis = redis.utils.HIREDIS_AVAILABLE
    wire = store.sync._wire is not None
    worker = dramatiq.Worker(broker, worker_threads=8, worker_timeout=100)
    worker.start()

    async def timed(canvas: object, n: int) -> float:
        start = time.perf_counter()
        handle = await Workflow(canvas).run()  # type: ignore[arg-type]
        await handle.wait(timeout=600)
        return n / (time.perf_counter() - start)

    async def main() -> dict[str, float]:
        await timed(Chain(task.message(0), task.message(1)), 2)  # warm up
        g = await timed(Group(*[task.message(i) for i in range(group)]), group)
        c = await timed(Chain(*[task.message(i) for i in range(chain)]), chain)
        await store.aclose()
        return {"group": g, "chain": c}

    try:
        out = asyncio.run(main())
    finally:
        worker.stop()
        broker.close()
        store.close()
    out["hiredis"] = float(hiredis)
    out["wire"] = float(wire)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--group", type=int, default=2000)
    parser.add_argument("--chain", type=int, default=300)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.group, args.chain)))
        return
    sys.path.insert(0, str(ROOT))
    from tests.conftest import start_redis

    server = start_redis()
    results: dict[str, dict[str, list[float]]] = {v: {"group": [], "chain": []} for v in VARIANTS}
    try:
        for r in range(args.rounds):
            order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
            for name in order:
                env = {**os.environ, **VARIANTS[name], "PYTHONPATH": str(ROOT)}
                out = subprocess.run(
                    [sys.executable, __file__, "--child", server.url, "--group", str(args.group),
                     "--chain", str(args.chain)],
                    env=env, check=True, capture_output=True, text=True,
                )  # fmt: skip
                got = json.loads(out.stdout.strip().splitlines()[-1])
                assert bool(got["wire"]) == (name == "wire"), (name, got)
                assert bool(got["hiredis"]) == (name != "redis-py"), (name, got)
                for shape in ("group", "chain"):
                    results[name][shape].append(got[shape])
    finally:
        server.stop()
    base = {s: statistics.median(results["wire"][s]) for s in ("group", "chain")}
    print(f"tasks/s, median (min-max) of {args.rounds} rounds; x: relative to the wire path")
    for name in VARIANTS:
        cells = []
        for s in ("group", "chain"):
            v = results[name][s]
            med = statistics.median(v)
            cells.append(f"{s} {med:7.0f} ({min(v):.0f}-{max(v):.0f}) {med / base[s]:.2f}x")
        print(f"{name:<18} " + "   ".join(cells))


if __name__ == "__main__":
    main()
