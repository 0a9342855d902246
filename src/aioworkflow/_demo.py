"""``aioworkflow demo``: the dramatiq-workflow README example, run for real in one process.

Tasks 1..8: task 1; then, in parallel, 2 then 5, 3, and 4 then (6 and 7 in parallel); then 8.
By default it runs on the embedded default (dramatiq's StubBroker + MemoryStore + an in-process
Worker), so it needs nothing installed but aioworkflow; ``--redis URL`` runs the same on a
RedisBroker + RedisStore.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol, TextIO

import dramatiq
from dramatiq.brokers.stub import StubBroker

from ._client import Workflow
from ._graph import Chain, Group
from ._middleware import WorkflowMiddleware
from ._status import State, WorkflowStatus
from ._store import MemoryStore, RedisStore
from .errors import StoreConnectionError

if TYPE_CHECKING:
    from ._store._base import StoreBackend

__all__ = ["run_demo"]

#: The demo's own queue: a worker on someone's Redis must not eat their "default" queue.
DEMO_QUEUE = "aioworkflow_demo"


def _canvas(task: Any) -> Chain:
    return Chain(
        task.message(1),
        Group(
            Chain(task.message(2), task.message(5)),
            task.message(3),
            Chain(task.message(4), Group(task.message(6), task.message(7))),
        ),
        task.message(8),
    )


async def _run(broker: dramatiq.Broker, store: StoreBackend, out: TextIO, seed: int) -> int:
    lock = threading.Lock()
    finished: list[int] = []
    t0 = time.monotonic()
    rng = random.Random(seed)
    pauses = {n: rng.uniform(0.05, 0.25) for n in range(1, 9)}

    def say(text: str) -> None:
        with lock:
            out.write(f"{time.monotonic() - t0:6.2f}s  {text}\n")
            out.flush()

    def task(n: int) -> None:
        say(f"task {n} started")
        time.sleep(pauses[n])
        with lock:
            finished.append(n)
            count = len(finished)
        say(f"task {n} finished   [{count}/8]")

    actor = dramatiq.actor(
        broker=broker, actor_name="demo_task", queue_name=DEMO_QUEUE, max_retries=0
    )(task)
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=50)
    worker.start()
    try:
        out.write("Chain(1, Group(Chain(2, 5), 3, Chain(4, Group(6, 7))), 8)\n")
        handle = await Workflow(_canvas(actor)).run(broker=broker, store=store)
        out.write(f"workflow {handle.id} started\n")
        status: WorkflowStatus = await handle.wait(timeout=60)
    finally:
        worker.stop()
    out.write(f"finish order: {' '.join(map(str, finished))}\n")
    out.write(f"state: {status.state}  ({status.succeeded}/{status.total} tasks succeeded)\n")
    return 0 if status.state is State.SUCCEEDED else 1


def run_demo(redis_url: str | None, out: TextIO, seed: int | None = None) -> int:
    """Run the demo workflow; returns the exit code (0 when it succeeded)."""
    broker: dramatiq.Broker
    store: StoreBackend
    if redis_url is None:
        broker, store = StubBroker(), MemoryStore()
        broker.emit_after("process_boot")
    else:
        from dramatiq.brokers.redis import RedisBroker

        _ping(redis_url)  # fail with one line before a worker starts logging connection errors
        broker = RedisBroker(url=redis_url)  # type: ignore[no-untyped-call]
        store = RedisStore(url=redis_url)
    broker.add_middleware(WorkflowMiddleware(store, reconcile_interval=0))
    previous = dramatiq.get_broker() if _has_global_broker() else None
    dramatiq.set_broker(broker)

    async def main() -> int:
        try:
            return await _run(broker, store, out, seed if seed is not None else time.time_ns())
        finally:
            await store.aclose()

    try:
        return asyncio.run(main())
    finally:
        store.close()
        broker.close()
        if previous is not None:
            dramatiq.set_broker(previous)


class _Pingable(Protocol):
    def ping(self) -> bool: ...
    def close(self) -> None: ...


def _connect(url: str) -> _Pingable:
    """A redis-py client, seen through a Protocol: ``Redis.ping``'s ``**kwargs`` are untyped."""
    import redis

    return redis.from_url(url, socket_connect_timeout=5)


def _ping(url: str) -> None:
    import redis

    client = _connect(url)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise StoreConnectionError(str(exc)) from exc
    finally:
        client.close()


def _has_global_broker() -> bool:
    import dramatiq.broker as b

    return b.global_broker is not None
