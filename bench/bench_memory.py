"""Redis memory per node of a stored 100,000-node workflow (``MEMORY USAGE`` of its keys).

    python bench/bench_memory.py [--quick] [--nodes N]

Starts a private redis-server, submits ``Group(*[work.message(i) for i in range(N)])`` in ready
mode (no messages in a broker queue) and in direct mode (its message templates stored for the
Lua scripts to push), and prints the bytes per node of each workflow key, before and after every
node has completed. Printed figures, not a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from aioworkflow import Group, RedisStore, Workflow, WorkflowMiddleware
from aioworkflow._keys import PARTS, workflow_keys


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start_redis() -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not on PATH")
    port = _free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", tempfile.mkdtemp(prefix="aiowf-bench-")],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    client.close()
    return proc, f"redis://127.0.0.1:{port}/0"


def _usage(client: redis.Redis, workflow_id: str) -> dict[str, int]:
    out = {}
    for part, key in zip(PARTS, workflow_keys(workflow_id), strict=True):
        used: Any = client.memory_usage(key, samples=0)
        out[part] = int(used or 0)
    return out


async def _measure(url: str, n: int, direct: bool) -> tuple[dict[str, int], dict[str, int], int]:
    store = RedisStore(url=url)
    client = redis.Redis.from_url(url)
    broker: dramatiq.Broker = RedisBroker(url=url) if direct else StubBroker()  # type: ignore[no-untyped-call]
    broker.add_middleware(WorkflowMiddleware(store, reconcile_interval=0))
    dramatiq.set_broker(broker)

    @dramatiq.actor(broker=broker, actor_name=f"work_{direct}")
    def work(i: int) -> None:
        """A task (never run: completions are driven straight through the store)."""

    handle = await Workflow(Group(*[work.message(i) for i in range(n)])).run(
        broker=broker, store=store
    )
    before = _usage(client, handle.id)
    queued = 0
    if direct:
        queued = sum(int(client.memory_usage(k, samples=0) or 0) for k in client.keys("dramatiq:*"))
        client.delete(*client.keys("dramatiq:*"))
    for i in range(n):  # complete every node, as workers would
        store.sync.complete(handle.id, i, None, [])
    after = _usage(client, handle.id)
    await store.aclose()
    store.close()
    broker.close()
    client.close()
    return before, after, queued


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10,000 nodes instead of 100,000")
    parser.add_argument("--nodes", type=int, default=None)
    args = parser.parse_args()
    n = args.nodes or (10_000 if args.quick else 100_000)
    proc, url = _start_redis()
    try:
        for direct in (False, True):
            redis.Redis.from_url(url).flushall()
            before, after, queued = asyncio.run(_measure(url, n, direct))
            mode = "direct (templates stored)" if direct else "ready mode"
            print(f"\n{n:,}-node group, {mode}: MEMORY USAGE per node, by key")
            print(f"  {'key':8} {'running B/node':>15} {'all done B/node':>16}")
            for part in PARTS:
                if before[part] or after[part]:
                    print(f"  {part:8} {before[part] / n:15.1f} {after[part] / n:16.1f}")
            total_b, total_a = sum(before.values()) / n, sum(after.values()) / n
            print(f"  {'total':8} {total_b:15.1f} {total_a:16.1f}")
            if direct:
                print(f"  dramatiq queue (the released messages): {queued / n:.1f} B/node")
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
