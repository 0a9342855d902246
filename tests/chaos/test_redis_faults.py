"""Redis faults on a worker's path: lost enqueues, killed connections, a restarted server.

Every workflow here is the same small DAG (nine tasks, a join between two groups) with an
``on_success`` callback, run with ``audit=True`` so that the event stream logs every release.
After each run the books are checked against each other:

* the workflow SUCCEEDED, and its stream holds exactly one ``node_released`` and one
  ``node_succeeded`` event per task (none: lost; two: released or counted twice);
* every task ran, and no run started after its node's completion had been recorded (read
  from the done bitmap by the task itself): a node may only run again while its completion is
  unrecorded (``reruns`` counts those legitimate second runs);
* ``on_success`` ran exactly once per workflow, once the queues and ready sets are drained.

The faults: the ``fault_after_barrier`` seam drops enqueues between the barrier script and
RabbitMQ (only the reconciler can send those nodes); a thread kills the client connections of
the private redis-server every 50-200 ms (in direct mode all but the RedisBroker's own); the
redis-server (AOF, fsync always, ballast that takes ~0.25 s to load) is SIGKILLed and
restarted on the same port and directory while tasks are in flight.

What they caught: a claim that hit a store error ran the actor anyway, unclaimed (dramatiq
swallows non-MiddlewareErrors of before-hooks: on_success ran twice); a claim error sent
the delivery through Retries, whose re-enqueue on the failing RedisBroker was lost (stalls);
``-LOADING`` after a restart was a ScriptError on the wire path, so completions were
swallowed (stalls); ``run()`` gave up on about 40% of submissions in the storm, and one cut
right after claiming its id left a key without a TTL (now: retried, idempotent attempts; the
id is claimed with a TTL). ``swallowed`` must stay 0: it counts errors of aioworkflow's hooks that
dramatiq logged and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import signal
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self, TypeVar

import anyio.to_thread
import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AsyncIO, CurrentMessage

from aioworkflow import (
    Chain,
    Group,
    RedisStore,
    State,
    Workflow,
    WorkflowHandle,
    WorkflowMiddleware,
    _keys,
)
from aioworkflow._dramatiq import _enqueue
from aioworkflow._machine import MetaField
from aioworkflow._plan import OPTION
from aioworkflow.errors import StoreConnectionError, StoreError, WorkflowTimeout
from tests.chaos._report import report, scaled
from tests.conftest import Env, make_env, poll_until, start_redis

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

    from aioworkflow import WorkflowStatus
    from tests.conftest import RedisServer

pytestmark = pytest.mark.chaos

T = TypeVar("T")
_DONE = _keys.PARTS.index("done")
_READY = _keys.PARTS.index("ready")
#: Tasks per workflow (see ``Rig.workflow``).
TASKS = 9
#: The client name of a direct-mode RedisBroker's connections.
BROKER_CLIENT = "chaos-dramatiq-broker"


# -- books -----------------------------------------------------------------------------------
@dataclass
class Tally:
    """What the actors saw, thread-safe. Times are wall-clock seconds (Redis uses that clock)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    runs: Counter[tuple[str, int]] = field(default_factory=Counter)
    first_start: dict[tuple[str, int], float] = field(default_factory=dict)
    #: Runs that started although the node's completion was already recorded.
    after_done: list[tuple[str, int]] = field(default_factory=list)
    callbacks: Counter[str] = field(default_factory=Counter)
    callback_at: dict[str, float] = field(default_factory=dict)

    def ran(self, workflow_id: str, node: int, done: bool, at: float) -> None:
        with self.lock:
            self.runs[workflow_id, node] += 1
            self.first_start.setdefault((workflow_id, node), at)
            if done:
                self.after_done.append((workflow_id, node))

    def called_back(self, workflow_id: str, at: float) -> None:
        with self.lock:
            self.callbacks[workflow_id] += 1
            self.callback_at.setdefault(workflow_id, at)


def _persistently(call: Callable[[], T], seconds: float = 30.0) -> T:
    """``call()``, again and again while Redis is unreachable (the faults are ours)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@dataclass
class Rig:
    """A broker and a store on a private Redis, a worker, the two actors and the books."""

    env: Env
    queue: str
    tally: Tally
    step: Any
    done: Any
    admin: redis.Redis
    submit_errors: Counter[str] = field(default_factory=Counter)

    def workflow(self) -> Workflow:
        m = self.step.message
        canvas = Chain(m(), Group(m(), Chain(m(), m()), m()), Group(m(), m(), m()), m())
        return Workflow(canvas, on_success=self.done.message(), audit=True)

    async def submit(self) -> WorkflowHandle | None:
        """Start a workflow; None if a fault cut the submission before it started.

        ``run()`` retries its steps on connection errors (each attempt of one submission is
        idempotent); when it still gives up, the error may come before or after the start
        script ran, so the stored state decides whether the workflow exists and runs.
        """
        wf = self.workflow()
        wf.id = uuid.uuid4().hex
        broker, store = self.env.broker, self.env.store
        try:
            return await wf.run(broker=broker, store=store)
        except StoreError as exc:
            self.submit_errors[type(exc).__name__] += 1
            key = _keys.workflow_keys(wf.id)[0]
            state = await anyio.to_thread.run_sync(
                lambda: _persistently(lambda: self.admin.hget(key, "state"))
            )
            if state is None or state == State.PENDING.value.encode():
                return None
            return WorkflowHandle(wf.id, broker=broker, store=store)

    def ready_entries(self, ids: list[str]) -> int:
        pipe = self.admin.pipeline(transaction=False)
        for wf in ids:
            pipe.zcard(_keys.workflow_keys(wf)[_READY])
        return sum(pipe.execute())

    def whereabouts(self, ids: list[str]) -> dict[str, Any]:
        """Where the unfinished nodes of stalled workflows are (for a failure message)."""
        db: Any = redis.Redis(port=self.admin.connection_pool.connection_kwargs["port"],
                              decode_responses=True)  # fmt: skip
        ns = getattr(self.env.broker, "namespace", "dramatiq")
        acked: set[str] = set()
        for key in db.scan_iter(f"{ns}:__acks__.*"):
            acked |= db.smembers(key)
        found: dict[tuple[str, int], list[tuple[str, str, bool, bool]]] = {}
        for queue in (self.queue, f"{self.queue}.DQ", f"{self.queue}.XQ"):
            queued = set(db.lrange(f"{ns}:{queue}", 0, -1)) | set(db.zrange(f"{ns}:{queue}", 0, -1))
            for rid, payload in db.hgetall(f"{ns}:{queue}.msgs").items():
                ref = json.loads(payload).get("options", {}).get(OPTION)
                if ref:
                    found.setdefault((ref[0], ref[1]), []).append(
                        (queue, rid, rid in queued, rid in acked)
                    )
        out: dict[str, Any] = {}
        for wf in ids:
            keys = _keys.workflow_keys(wf)
            ready = set(db.zrange(keys[_READY], 0, -1))
            claims = db.hgetall(keys[_keys.PARTS.index("claims")])
            out[wf] = {
                n: {
                    "ran": self.tally.runs[wf, n],
                    "ready": str(n) in ready,
                    "claim": claims.get(str(n)),
                    "msgs (queue, id, queued, unacked)": found.get((wf, n), []),
                }
                for n in range(TASKS)
                if not db.getbit(keys[_DONE], n)
            }
        db.close()
        return out

    def drain(self) -> None:
        """Wait until the queues are empty and the worker is idle."""
        broker = self.env.broker
        for queue in (self.queue, f"{self.queue}.DQ"):
            if isinstance(broker, RedisBroker):
                broker.join(queue, timeout=30_000)
            else:
                broker.join(queue, min_successes=3, idle_time=50, timeout=30_000)  # type: ignore[call-arg]
        for w in self.env.workers:
            w.join()


@contextlib.asynccontextmanager
async def rig(kind: str, url: str, work_s: float = 0.0, **mw: Any) -> AsyncIterator[Rig]:
    """A rig on ``kind`` ("rabbitmq": ready mode; "redis": direct mode on the same Redis,
    the broker's own connections named ``BROKER_CLIENT``)."""
    if kind == "redis":
        broker = RedisBroker(url=f"{url}?client_name={BROKER_CLIENT}")  # type: ignore[no-untyped-call]
        store = RedisStore(url=url)
        broker.add_middleware(AsyncIO())
        middleware = WorkflowMiddleware(store, **mw)
        broker.add_middleware(middleware)
        dramatiq.set_broker(broker)
        env = Env(kind, broker, store, middleware)
    else:
        env = make_env(kind, url, **mw)
    env.broker.add_middleware(CurrentMessage())
    queue = f"chaos_rf_{uuid.uuid4().hex[:10]}"
    tally = Tally()
    observer = redis.Redis.from_url(url)

    def step() -> None:
        message = CurrentMessage.get_current_message()
        assert message is not None
        workflow_id, node = message.options[OPTION][:2]
        key = _keys.workflow_keys(workflow_id)[_DONE]
        at = time.time()
        done = _persistently(lambda: observer.getbit(key, node))
        tally.ran(workflow_id, node, bool(done), at)
        if work_s:  # the task's own work: keeps tasks in flight when a fault hits
            time.sleep(random.uniform(0, work_s))

    def finished(workflow_id: str) -> None:
        tally.called_back(workflow_id, time.time())

    # Store errors before a task (claim) fail the attempt: retry soon, and for long enough.
    options = {"queue_name": queue, "max_retries": 10_000, "min_backoff": 20, "max_backoff": 400}
    built = Rig(
        env,
        queue,
        tally,
        env.actor(step, actor_name=f"{queue}_step", **options),
        env.actor(finished, actor_name=f"{queue}_done", **options),
        redis.Redis.from_url(url),
    )
    try:
        env.worker(threads=8)
        yield built
    finally:
        for w in env.workers:
            w.stop()
        env.workers.clear()
        if kind == "rabbitmq":  # leave the shared RabbitMQ clean
            for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
                with contextlib.suppress(Exception):
                    env.broker.channel.queue_delete(name)  # type: ignore[attr-defined]
        env.close()
        observer.close()
        built.admin.close()
        await env.store.aclose()
        env.store.close()


async def settle_all(r: Rig, handles: list[WorkflowHandle], seconds: float) -> list[WorkflowStatus]:
    """Each workflow's final status; fails naming the stalled ones after ``seconds``."""
    deadline = time.monotonic() + seconds
    out: list[WorkflowStatus] = []
    for handle in handles:
        while True:
            try:
                out.append(await handle.wait(timeout=max(0.1, deadline - time.monotonic())))
                break
            except StoreConnectionError:
                continue
            except WorkflowTimeout:
                stalled = [h.id for h in handles if not (await h.status()).done]
                where = await anyio.to_thread.run_sync(r.whereabouts, stalled[:3])
                pytest.fail(f"{len(stalled)} workflows stalled; the first ones: {where}")
    return out


async def all_done(handles: list[WorkflowHandle], until: float) -> bool:
    """Whether every workflow ended before monotonic time ``until`` (False at that time)."""
    pending = list(handles)
    while pending and time.monotonic() < until:
        with contextlib.suppress(StoreConnectionError):
            pending = [h for h in pending if not (await h.status()).done]
        await asyncio.sleep(0.1)
    return not pending


@dataclass
class Books:
    """The checked figures of a run."""

    workflows: int
    nodes: int
    lost: int
    doubly_released: int
    double_counted: int
    never_ran: int
    after_done: int
    reruns: int
    callbacks_missing: int
    callbacks_doubled: int
    #: Wall-clock ms of every completion (from the stream ids), sorted.
    completions_ms: list[int]
    finished_ms: list[int]

    def figures(self) -> dict[str, Any]:
        return {
            "workflows": self.workflows,
            "nodes": self.nodes,
            "lost": self.lost,
            "doubly_released": self.doubly_released,
            "double_counted": self.double_counted,
            "reruns": self.reruns,
            "after_done": self.after_done,
            "on_success_missing": self.callbacks_missing,
            "on_success_doubled": self.callbacks_doubled,
        }

    def check(self) -> None:
        assert self.lost == 0, "releases or completions lost (or tasks never run)"
        assert self.doubly_released == 0, "a node was released twice"
        assert self.double_counted == 0, "a completion was counted twice"
        assert self.after_done == 0, "a task ran again after its completion was recorded"
        assert self.callbacks_missing == 0, "on_success never ran"
        assert self.callbacks_doubled == 0, "on_success ran twice"

    def max_gap_s(self, since_ms: int) -> float:
        """Longest stretch without a completion while work was left."""
        marks = [since_ms, *self.completions_ms]
        return max((b - a for a, b in itertools.pairwise(marks)), default=0) / 1000


async def audit(r: Rig, handles: list[WorkflowHandle], statuses: list[WorkflowStatus]) -> Books:
    """Drain everything, then read every workflow's stream and compare with the tally."""
    assert all(s.state is State.SUCCEEDED for s in statuses), [
        s for s in statuses if s.state is not State.SUCCEEDED
    ]
    ids = [h.id for h in handles]
    await poll_until(lambda: all(r.tally.callbacks[i] for i in ids), 30, "every on_success")
    await poll_until(lambda: r.ready_entries(ids) == 0, 30, "empty ready sets")
    await anyio.to_thread.run_sync(r.drain)
    released: Counter[tuple[str, int]] = Counter()
    succeeded: Counter[tuple[str, int]] = Counter()
    completions: list[int] = []
    for handle in handles:
        async for event in handle.events(follow=False):
            if event.kind == "node_released" and event.node is not None:
                released[handle.id, event.node] += 1
            elif event.kind == "node_succeeded" and event.node is not None:
                succeeded[handle.id, event.node] += 1
                completions.append(int(event.id.split("-")[0]))
    nodes = [(i, n) for i in ids for n in range(TASKS)]
    tally = r.tally
    return Books(
        workflows=len(ids),
        nodes=len(nodes),
        lost=sum(1 for k in nodes if not released[k] or not succeeded[k] or not tally.runs[k]),
        doubly_released=sum(max(0, released[k] - 1) for k in nodes),
        double_counted=sum(max(0, succeeded[k] - 1) for k in nodes),
        never_ran=sum(1 for k in nodes if not tally.runs[k]),
        after_done=len(tally.after_done),
        reruns=sum(max(0, tally.runs[k] - 1) for k in nodes),
        callbacks_missing=sum(1 for i in ids if not tally.callbacks[i]),
        callbacks_doubled=sum(1 for i in ids if tally.callbacks[i] > 1),
        completions_ms=sorted(completions),
        finished_ms=sorted(s.finished_at or 0 for s in statuses),
    )


class LogTally(logging.Handler):
    """Counts log records of aioworkflow and dramatiq: the faults the worker met and survived."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.mutex = threading.Lock()
        self.resent = 0
        self.loading = 0
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        with self.mutex:
            if record.msg.startswith("Reconciler re-sends") and record.args:
                self.resent += len(record.args[0])  # type: ignore[arg-type,index]
            elif record.levelno >= logging.WARNING:
                self.counts[record.getMessage()[:200]] += 1
                exc = record.exc_info[1] if record.exc_info else None
                while exc is not None:  # Redis answering -LOADING after a restart
                    self.loading += "LOADING" in str(exc)
                    exc = exc.__cause__

    def seen(self, prefix: str, containing: str = "") -> int:
        with self.mutex:
            return sum(
                c
                for text, c in self.counts.items()
                if text.startswith(prefix) and containing in text
            )

    def figures(self) -> dict[str, int]:
        """Faults met on the worker's path, and errors dramatiq swallowed (must stay 0)."""
        return {
            "attempts_failed": self.seen("Failed to process message"),
            "completions_deferred": self.seen("Completion of workflow"),
            "swallowed": self.seen("Unexpected failure in", "aioworkflow"),
            "loading_errors": self.loading,
        }


@contextlib.contextmanager
def log_tally() -> Iterator[LogTally]:
    handler = LogTally()
    loggers = [logging.getLogger("aioworkflow"), logging.getLogger("dramatiq")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
    loggers[0].setLevel(logging.INFO)
    try:
        yield handler
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


@contextlib.asynccontextmanager
async def log_tally_async() -> AsyncIterator[LogTally]:
    with log_tally() as handler:
        yield handler


# -- 1. lost enqueues --------------------------------------------------------------------------
RECONCILE_AGE = 0.5


@pytest.mark.timeout(scaled(90, 1800))
async def test_enqueues_lost_after_the_barrier_are_sent_by_the_reconciler(
    servers: list[RedisServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a RabbitMQ worker (ready mode) whose enqueues after each barrier script are dropped
    # for about a third of the released nodes and callbacks, as if it died right there
    server = start_redis()
    servers.append(server)
    n = scaled(40, 600)
    seed = random.randrange(1 << 30)
    rng, rng_lock = random.Random(seed), threading.Lock()
    dropped: dict[tuple[str, int | str], float] = {}

    def drop_some(workflow_id: str, released: tuple[int | str, ...]) -> list[int | str]:
        kept = []
        with rng_lock:
            for key in released:
                if rng.random() < 0.3:
                    dropped[workflow_id, key] = time.time()
                else:
                    kept.append(key)
        return kept

    monkeypatch.setattr(_enqueue, "fault_after_barrier", drop_some)
    started = time.monotonic()
    async with rig(
        "rabbitmq", server.url, reconcile_interval=0.1, reconcile_age=RECONCILE_AGE
    ) as r:
        with log_tally() as logs:
            # When workflows run
            handles = [h for h in await asyncio.gather(*(r.submit() for _ in range(n))) if h]
            assert len(handles) == n
            statuses = await settle_all(r, handles, scaled(60, 1500))
            books = await audit(r, handles, statuses)
        # Then every dropped node (and callback) was sent again by the reconciler, and only by
        # it: its first run started at least reconcile_age after it was dropped
        delays = []
        for (wf, key), at in dropped.items():
            if isinstance(key, str):
                first = r.tally.callback_at.get(wf)
            else:
                first = r.tally.first_start.get((wf, key))
            assert first is not None, f"dropped {key} of {wf} never ran"
            delays.append(first - at)
        exact = sum(1 for h in handles for n in range(TASKS) if r.tally.runs[h.id, n] == 1)
        report(
            "lost_enqueue",
            **books.figures(),
            dropped=len(dropped),
            resent=logs.resent,
            recover_min_s=min(delays, default=0.0),
            recover_mean_s=sum(delays) / max(1, len(delays)),
            recover_max_s=max(delays, default=0.0),
            seed=seed,
            elapsed_s=time.monotonic() - started,
        )
    books.check()
    assert len(dropped) > n // 2, "the fault seam dropped (almost) nothing"
    assert min(delays) >= RECONCILE_AGE - 0.05, "a dropped node was sent before the reconciler"
    assert logs.resent >= len(dropped)
    # nothing failed on the broker side, so every task ran exactly once
    assert exact == books.nodes


# -- 2a. connection kill storm -----------------------------------------------------------------
class Killer:
    """A thread that kills client connections every 50-200 ms while it runs: every normal
    connection but its own, or every one not named ``spare``."""

    def __init__(self, port: int, spare: str | None = None) -> None:
        self.admin = redis.Redis(port=port, decode_responses=True)
        self.spare = spare
        self.stop = threading.Event()
        self.kills = 0
        self.clients_killed = 0
        self.thread = threading.Thread(target=self._run, name="client-killer", daemon=True)

    def _kill(self) -> int:
        if self.spare is None:
            return int(self.admin.client_kill_filter(_type="normal", skipme=True))
        me = self.admin.client_id()
        victims = [
            c["id"]
            for c in self.admin.client_list(_type="normal")
            if c["name"] != self.spare and int(c["id"]) != me
        ]
        pipe = self.admin.pipeline(transaction=False)
        for victim in victims:
            pipe.client_kill_filter(_id=victim)
        return sum(int(n) for n in pipe.execute(raise_on_error=False) if isinstance(n, int))

    def _run(self) -> None:
        while not self.stop.wait(random.uniform(0.05, 0.2)):
            with contextlib.suppress(redis.ConnectionError):
                self.clients_killed += self._kill()
                self.kills += 1

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        self.admin.close()


@pytest.mark.timeout(scaled(90, 1800))
@pytest.mark.parametrize("kind", ["rabbitmq", "redis"])
async def test_completions_survive_a_client_kill_storm(
    kind: str, servers: list[RedisServer]
) -> None:
    # Given a worker: RabbitMQ with a private Redis store (ready mode), or a RedisBroker on
    # that same Redis (direct mode: the scripts push into its queues, complete.lua acks)
    server = start_redis()
    servers.append(server)
    n = scaled(60, 1500)
    storm_s = scaled(6, 120)
    started = time.monotonic()
    async with (
        rig(kind, server.url, reconcile_interval=0.2, reconcile_age=1.0) as r,
        log_tally_async() as logs,
    ):
        # When workflows are submitted and run while client connections are killed every
        # 50-200 ms (submissions cut by a kill before the workflow started do not count):
        # every one with RabbitMQ; in direct mode all but dramatiq's own, because a
        # RedisBroker that loses a fetch reply or restarts its consumer leaves the fetched
        # messages in its ack set until the worker process restarts (seen here: the node's
        # payload and its id in the live worker's ack set, never delivered), which is
        # dramatiq's recovery to make, not the store's
        spare = BROKER_CLIENT if kind == "redis" else None
        connections = r.admin.info("stats")["total_connections_received"]
        with Killer(server.port, spare) as killer:
            t0 = int(time.time() * 1000)
            pace = storm_s * 0.7 / n
            handles: list[WorkflowHandle] = []
            for _ in range(n):
                handle = await r.submit()
                if handle is not None:
                    handles.append(handle)
                await asyncio.sleep(pace)
            await all_done(handles, started + storm_s)  # the storm lasts storm_s at most
        storm_end = int(time.time() * 1000)
        # Then, once the storm is over, every workflow succeeds with its books straight
        statuses = await settle_all(r, handles, scaled(60, 600))
        books = await audit(r, handles, statuses)
        report(
            f"client_kill_storm[{kind}]",
            **books.figures(),
            submitted=n,
            submits_cut=n - len(handles),
            submit_errors=dict(r.submit_errors),
            kills=killer.kills,
            connections_killed=killer.clients_killed,
            reconnects=r.admin.info("stats")["total_connections_received"] - connections,
            **logs.figures(),
            max_gap_s=books.max_gap_s(t0),
            recover_s=max(0, books.finished_ms[-1] - storm_end) / 1000,
            elapsed_s=time.monotonic() - started,
        )
    books.check()
    assert logs.figures()["swallowed"] == 0, "dramatiq swallowed an error of the middleware"
    assert killer.clients_killed > killer.kills, "the storm killed (almost) nothing"
    assert n - len(handles) <= max(1, n // 20), "run() gave up on submissions: it retries"


# -- 2b. redis-server restarts -----------------------------------------------------------------
AOF = ("--appendonly", "yes", "--appendfsync", "always", "--enable-debug-command", "local")


def load_ballast(port: int, keys: int) -> None:
    """Fill the server with ``keys`` small keys and rewrite its AOF, so that every restart
    spends a while loading it (about 0.25 s for 500,000 keys): clients get ``-LOADING``."""
    admin = redis.Redis(port=port)
    admin.execute_command("DEBUG", "POPULATE", keys, "ballast")  # type: ignore[no-untyped-call]
    admin.bgrewriteaof()
    deadline = time.monotonic() + 60
    while True:
        info = admin.info("persistence")
        if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
            break
        assert time.monotonic() < deadline, "the AOF rewrite did not finish"
        time.sleep(0.05)
    admin.close()


@pytest.mark.timeout(scaled(90, 1800))
async def test_completions_survive_redis_restarts(servers: list[RedisServer]) -> None:
    # Given a RabbitMQ worker whose store is a redis-server with an fsync-always AOF, holding
    # ballast so that each restart spends a moment loading (clients get LOADING meanwhile)
    server = start_redis(*AOF)
    servers.append(server)
    load_ballast(server.port, 500_000)
    pace, per_tick = 0.1, 3
    restarts = scaled(2, 12)
    started = time.monotonic()
    recover: list[float] = []
    down: list[float] = []
    async with (
        rig("rabbitmq", server.url, 0.05, reconcile_interval=0.2, reconcile_age=1.0) as r,
        log_tally_async() as logs,
    ):
        t0 = int(time.time() * 1000)
        handles: list[WorkflowHandle] = []
        stop = asyncio.Event()

        async def submitter() -> None:  # a steady flow of workflows until the last restart,
            while not stop.is_set():  # a little faster than the worker: tasks are in flight
                batch = await asyncio.gather(*(r.submit() for _ in range(per_tick)))
                handles.extend(h for h in batch if h is not None)
                await asyncio.sleep(pace)

        def count_done() -> int:
            pipe = r.admin.pipeline(transaction=False)
            for h in handles.copy():  # the submitter appends meanwhile
                pipe.hget(_keys.workflow_keys(h.id)[0], MetaField.SUCCEEDED)
            return sum(int(ok or 0) for ok in pipe.execute())

        async def restart() -> None:
            assert server.proc is not None
            before = await anyio.to_thread.run_sync(count_done)
            # When the server is SIGKILLed while tasks complete, and restarted on the same
            # port and directory after a short outage
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait(10)
            killed = time.monotonic()
            await asyncio.sleep(random.uniform(0.3, 1.0))
            spawned = time.monotonic()
            back = await anyio.to_thread.run_sync(
                lambda: start_redis(*AOF, port=server.port, workdir=server.workdir)
            )
            server.proc = back.proc
            down.append(time.monotonic() - killed)
            # (completions acknowledged before the kill survive it: fsync always)
            assert await anyio.to_thread.run_sync(count_done) >= before, "completions lost"
            await poll_until(lambda: count_done() > before, 60, "a completion after a restart")
            recover.append(time.monotonic() - spawned)

        feeding = asyncio.create_task(submitter())
        try:
            for _ in range(restarts):
                await asyncio.sleep(random.uniform(1.0, 2.0))
                await restart()
        finally:
            stop.set()
            await feeding
            if server.proc is None or server.proc.poll() is not None:  # never leave it down
                server.proc = start_redis(*AOF, port=server.port, workdir=server.workdir).proc
        # Then every workflow succeeds with its books straight
        statuses = await settle_all(r, handles, scaled(60, 600))
        books = await audit(r, handles, statuses)
        report(
            "redis_restart",
            **books.figures(),
            restarts=restarts,
            down_max_s=max(down, default=0.0),
            **logs.figures(),
            max_gap_s=books.max_gap_s(t0),
            recover_max_s=max(recover, default=0.0),
            elapsed_s=time.monotonic() - started,
        )
    books.check()
    assert logs.figures()["swallowed"] == 0, "dramatiq swallowed an error of the middleware"
