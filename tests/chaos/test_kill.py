"""Crashes and duplicate deliveries: SIGKILLed CLI workers, and duplicate storms.

1. ``test_sigkilled_workers_lose_nothing_and_release_nothing_twice``: three real dramatiq CLI
   workers (``python -m dramatiq tests.chaos.kill_app -p 1 -t 4``, each in its own process
   group) run random workflows on a private redis-server that is both the store and the
   RedisBroker (direct mode). Every 1-3 s a random worker's process group is SIGKILLed and a
   replacement started. dramatiq requeues a dead worker's unacked messages once its heartbeat
   is ``kill_app.HEARTBEAT_MS`` old; the redeliveries keep their message id, so the claim lets
   an interrupted node run again, and the done bit makes it count once.
2. Duplicate storms on an in-process worker (RedisBroker on a private Redis): a middleware in
   front of ``WorkflowMiddleware`` re-enqueues deliveries with the *same* message id (what a
   broker redelivery looks like; the claim cannot tell such a copy from the original, so it may
   run, even concurrently with it):

   a. every message delivered twice: the copy at once, after a short delay, or after the
      node's completion;
   b. every message delivered ten times at once: the ten copies meet in a barrier inside the
      actor, so they run and complete concurrently.

After each run the books are checked (``Books``): every workflow SUCCEEDED with the right
result; every node ran and got the right piped input in every execution; its stream holds
exactly one ``node_released`` and one ``node_succeeded`` event (``audit=True``), the release
after the completions of all its predecessors (stream order, from the compiled Dag); and no
execution started before its release or before each predecessor had finished at least once
(actor clocks). Every message of the broker was acked in the end: no delivery leaked.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import dramatiq
import orjson
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from aioworkflow import Chain, Group, RedisStore, State, Workflow, WorkflowMiddleware, compile
from aioworkflow._plan import OPTION
from aioworkflow.errors import WorkflowTimeout
from tests._canvas_strategies import build, evaluate
from tests.chaos import kill_app
from tests.chaos._report import report, scaled
from tests.conftest import poll_until, start_redis

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

    from dramatiq.broker import MessageProxy

    from aioworkflow import WorkflowHandle, WorkflowStatus
    from aioworkflow._dag import Dag
    from tests._canvas_strategies import Shape
    from tests.conftest import RedisServer

pytestmark = pytest.mark.chaos

ROOT = Path(__file__).resolve().parents[2]
NS = "dramatiq"


# -- random shapes (seeded) -----------------------------------------------------------------
def random_shape(
    rng: random.Random, budget: int, max_delay: int, delayed: bool = False, depth: int = 0
) -> Shape:
    """A shape of ``budget`` leaves for ``tests._canvas_strategies.build``, drawn from ``rng``
    the way ``sized_shapes`` draws it (chains, piped chains, groups, delays, graphs with edges
    in any add order), so that a seed reproduces a run."""
    if budget == 0:
        return rng.choice([("chain", [], False), ("group", [])])
    if budget == 1 and depth > 4:
        return ("leaf", rng.random() < 0.5)
    kinds = (["leaf"] if budget == 1 else []) + ["chain", "group", "graph"]
    kind = rng.choice(kinds if delayed else [*kinds, "delay"])
    if kind == "leaf":
        return ("leaf", rng.random() < 0.5)
    if kind == "delay":
        inner = random_shape(rng, budget, max_delay, True, depth + 1)
        return ("delay", rng.randint(0, max_delay), inner)
    k = rng.randint(min(budget, 2), min(budget, 5))
    cuts = sorted(rng.sample(range(1, budget), k - 1))
    budgets = [b - a for a, b in itertools.pairwise([0, *cuts, budget])]
    parts = [random_shape(rng, b, max_delay, False, depth + 1) for b in budgets]
    if kind == "chain":
        return ("chain", parts, rng.random() < 0.5)
    if kind == "group":
        return ("group", parts)
    nodes = [
        (p, set(rng.sample(range(i), rng.randint(0, min(i, 2)))) if i else set())
        for i, p in enumerate(parts)
    ]
    order = list(range(len(nodes)))
    rng.shuffle(order)
    return ("graph", nodes, order)


def task_predecessors(dag: Dag) -> list[set[int]]:
    """Each task node's direct task predecessors (through join vertices)."""
    preds: list[set[int]] = [set() for _ in range(len(dag))]
    for v in range(len(dag)):
        for w in dag.task_successors(v):
            preds[w].add(v)
    return preds


# -- books ----------------------------------------------------------------------------------
@dataclass
class Planned:
    """A submitted workflow: its handle, compiled Dag and the label of each node."""

    handle: WorkflowHandle
    dag: Dag
    labels: list[int]


@dataclass
class Start:
    label: int
    at: float
    group: int = 0


@dataclass
class Run:
    """A finished execution (wall-clock seconds)."""

    label: int
    start: float
    end: float
    group: int
    piped: list[Any]


@dataclass
class Books:
    """The checked figures of a run; ``problems`` names the first offenders of each kind."""

    workflows: int = 0
    nodes: int = 0
    executions: int = 0
    lost: int = 0
    doubly_released: int = 0
    double_counted: int = 0
    released_early: int = 0
    started_early: int = 0
    started_before_release: int = 0
    ran_after_done: int = 0
    bad_pipe: int = 0
    bad_result: int = 0
    not_succeeded: int = 0
    problems: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))

    def problem(self, kind: str, what: Any) -> None:
        if len(self.problems[kind]) < 5:
            self.problems[kind].append(what)

    @property
    def reexecutions(self) -> int:
        return self.executions - self.nodes

    def figures(self) -> dict[str, Any]:
        return {
            "workflows": self.workflows,
            "nodes": self.nodes,
            "lost": self.lost,
            "doubly_released": self.doubly_released,
            "double_counted": self.double_counted,
            "reexecutions": self.reexecutions,
            "started_early": self.started_early,
            "ran_after_done": self.ran_after_done,
        }

    def check(self, *, after_done: bool = True) -> None:
        """Fail on any broken promise (``after_done``: also on a run started after the node's
        completion was recorded, impossible unless two deliveries of one message overlap)."""
        where = dict(self.problems)
        assert self.not_succeeded == 0, f"workflows not SUCCEEDED: {where}"
        assert self.bad_result == 0, f"wrong workflow results: {where}"
        assert self.lost == 0, f"nodes never released, counted or run: {where}"
        assert self.doubly_released == 0, f"nodes released twice: {where}"
        assert self.double_counted == 0, f"completions counted twice: {where}"
        assert self.released_early == 0, f"released before a predecessor completed: {where}"
        assert self.started_early == 0, f"started before a predecessor finished: {where}"
        assert self.started_before_release == 0, f"started before its release: {where}"
        assert self.bad_pipe == 0, f"wrong piped input: {where}"
        if after_done:
            assert self.ran_after_done == 0, f"ran after its completion: {where}"


def _ms(event_id: str) -> int:
    return int(event_id.split("-")[0])


async def audit(
    planned: list[Planned],
    statuses: list[WorkflowStatus],
    starts: list[Start],
    runs: list[Run],
) -> Books:
    """Compare every workflow's status, result and event stream with what the actors saw."""
    books = Books(workflows=len(planned), executions=len(starts))
    starts_of: dict[int, list[float]] = defaultdict(list)
    for s in starts:
        starts_of[s.label].append(s.at)
    runs_of: dict[int, list[Run]] = defaultdict(list)
    for r in runs:
        runs_of[r.label].append(r)
    for p, status in zip(planned, statuses, strict=True):
        dag, labels, wf = p.dag, p.labels, p.handle.id
        books.nodes += len(dag)
        if status.state is not State.SUCCEEDED or status.succeeded != len(dag):
            books.not_succeeded += 1
            books.problem("not_succeeded", status)
            continue
        result = await p.handle.result(timeout=5)
        if result != evaluate(dag.result, labels):
            books.bad_result += 1
            books.problem("bad_result", (wf, result))
        released: dict[int, list[int]] = defaultdict(list)  # node -> stream positions
        succeeded: dict[int, list[int]] = defaultdict(list)
        at: dict[tuple[str, int], int] = {}  # (kind, node) -> ms of the first such event
        position = 0
        async for event in p.handle.events(follow=False):
            position += 1
            if event.node is None:
                continue
            kinds = {"node_released": released, "node_succeeded": succeeded}
            if event.kind in kinds:
                kinds[event.kind][event.node].append(position)
                at.setdefault((event.kind, event.node), _ms(event.id))
        preds = task_predecessors(dag)
        for v in range(len(dag)):
            label = labels[v]
            where = (wf, v, label)
            if not released[v] or not succeeded[v] or not runs_of[label]:
                books.lost += 1
                books.problem("lost", (*where, len(released[v]), len(succeeded[v])))
                continue
            books.doubly_released += len(released[v]) - 1
            books.double_counted += len(succeeded[v]) - 1
            if len(released[v]) > 1:
                books.problem("doubly_released", where)
            if any(succeeded[u][0] > released[v][0] for u in preds[v]):
                books.released_early += 1
                books.problem("released_early", where)
            # the first finish of each predecessor, by the actors' clock
            finished = [min(r.end for r in runs_of[labels[u]]) for u in preds[v]]
            rel_ms, ok_ms = at["node_released", v], at["node_succeeded", v]
            expected = [evaluate(dag.node(v).pipe, labels)] if v in dag.pipes else []
            for start in starts_of[label]:
                if any(start < f for f in finished):
                    books.started_early += 1
                    books.problem("started_early", (*where, start, finished))
                if start * 1000 < rel_ms - 1:  # stream ids are whole ms
                    books.started_before_release += 1
                    books.problem("started_before_release", (*where, start, rel_ms))
                if start * 1000 > ok_ms + 1:
                    books.ran_after_done += 1
                    books.problem("ran_after_done", (*where, start, ok_ms))
            for r in runs_of[label]:
                if r.piped != expected:
                    books.bad_pipe += 1
                    books.problem("bad_pipe", (*where, r.piped, expected))
    return books


async def settle(planned: list[Planned], seconds: float) -> list[WorkflowStatus]:
    """Every workflow's final status; fails naming a stalled one after ``seconds``."""
    deadline = time.monotonic() + seconds
    out = []
    for p in planned:
        try:
            out.append(await p.handle.wait(timeout=max(0.1, deadline - time.monotonic())))
        except WorkflowTimeout:
            stalled = [q for q in planned if not (await q.handle.status()).done]
            first = stalled[0]
            pytest.fail(
                f"{len(stalled)} workflows stalled; the first: {await first.handle.status()}"
            )
    return out


def undelivered(admin: redis.Redis) -> dict[str, int]:
    """Messages the broker still holds (stored payloads and ack-set entries), by key."""
    out = {}
    for key in admin.scan_iter(f"{NS}:*"):
        name = key.decode()
        if name.endswith(".msgs"):
            out[name] = int(admin.hlen(key))
        elif ":__acks__." in name:
            out[name] = int(admin.scard(key))
    return {k: v for k, v in out.items() if v}


# -- 1. SIGKILLed CLI workers -----------------------------------------------------------------
class Fleet:
    """dramatiq CLI worker processes, each in its own process group (its leader's pid)."""

    def __init__(self, url: str, logdir: str) -> None:
        self.url = url
        self.logdir = logdir
        self.alive: list[subprocess.Popen[bytes]] = []
        self.spawned = 0
        #: (wall-clock time, process group) of every kill
        self.kills: list[tuple[float, int]] = []

    def spawn(self) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "AIOWF_KILL_REDIS_URL": self.url,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        self.spawned += 1
        with open(os.path.join(self.logdir, f"worker{self.spawned}.log"), "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dramatiq", "tests.chaos.kill_app", "-p", "1", "-t", "4"],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.alive.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL the whole process group of ``proc`` (the CLI and its worker process)."""
        self.alive.remove(proc)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        self.kills.append((time.time(), proc.pid))
        proc.wait(10)

    def close(self) -> None:
        for proc in list(self.alive):
            self.kill(proc)


@pytest.fixture
def fleet(servers: list[RedisServer]) -> Iterator[Fleet]:
    """A private redis-server and the worker fleet on it; every process killed at teardown."""
    server = start_redis()
    servers.append(server)
    f = Fleet(server.url, tempfile.mkdtemp(prefix="aiowf-kill-"))
    try:
        yield f
    finally:
        f.close()


def read_records(admin: redis.Redis) -> tuple[list[Start], list[Run]]:
    starts = [Start(*orjson.loads(x)) for x in admin.lrange(kill_app.STARTS, 0, -1)]
    runs = [Run(*orjson.loads(x)) for x in admin.lrange(kill_app.RUNS, 0, -1)]
    return starts, runs


def in_flight_groups(admin: redis.Redis) -> set[int]:
    """Process groups running a task now: a start recorded, its run not (yet)."""
    starts, runs = read_records(admin)
    finished = {(r.label, r.start, r.group) for r in runs}
    return {s.group for s in starts if (s.label, s.at, s.group) not in finished}


def recovery_times(fleet: Fleet, starts: list[Start], runs: list[Run]) -> list[float]:
    """Per task killed mid-run: seconds from the kill to the task's next start."""
    finished = {(r.label, r.start, r.group) for r in runs}
    next_starts: dict[int, list[float]] = defaultdict(list)
    for s in starts:
        next_starts[s.label].append(s.at)
    out = []
    for killed_at, group in fleet.kills:
        for s in starts:
            if s.group == group and s.at <= killed_at and (s.label, s.at, group) not in finished:
                later = [t for t in next_starts[s.label] if t > killed_at]
                if later:
                    out.append(min(later) - killed_at)
    return out


@pytest.mark.timeout(scaled(150, 1800))
async def test_sigkilled_workers_lose_nothing_and_release_nothing_twice(fleet: Fleet) -> None:
    # Given three CLI workers on a private Redis (store and RedisBroker alike)
    started = time.monotonic()
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    n = scaled(80, 700)
    storm_s = scaled(30, 420)
    broker, store = kill_app.make_broker(fleet.url)
    leaf, other = kill_app.declare(broker)
    admin = redis.Redis.from_url(fleet.url)
    for _ in range(3):
        fleet.spawn()
    await poll_until(lambda: admin.zcard(f"{NS}:__heartbeats__") >= 3, 60, "three live workers")
    labels = itertools.count()
    planned: list[Planned] = []
    submitting = True

    async def submit() -> None:
        # When random workflows (5-25 tasks, delays up to 300 ms) are submitted steadily
        nonlocal submitting
        pace = storm_s * 0.7 / n
        for _ in range(n):
            shape = random_shape(rng, rng.randint(5, 25), 300)
            canvas = build(shape, lambda label, o: (other if o else leaf).message(label), labels)
            dag = compile(canvas)
            handle = await Workflow(canvas, audit=True).run(broker=broker, store=store)
            planned.append(Planned(handle, dag, [node.args[0] for node in dag.nodes]))
            await asyncio.sleep(pace)
        submitting = False

    async def any_running() -> bool:
        for p in planned:
            if not (await p.handle.status()).done:
                return True
        return False

    async def killer() -> None:
        # and a random worker's process group is SIGKILLed every 1-3 s and replaced, while
        # workflows are submitted and until they are all done (or the storm is over)
        deadline = started + storm_s
        while time.monotonic() < deadline and (submitting or await any_running()):
            await asyncio.sleep(rng.uniform(1.0, 3.0))
            # the victim: a worker with a task in flight, if one gets one within a second
            busy: set[int] = set()
            for _ in range(20):
                busy = await anyio.to_thread.run_sync(in_flight_groups, admin)
                if busy & {p.pid for p in fleet.alive}:
                    break
                await asyncio.sleep(0.05)
            victims = [p for p in fleet.alive if p.pid in busy] or fleet.alive
            fleet.kill(rng.choice(victims))
            fleet.spawn()

    try:
        await asyncio.gather(submit(), killer())
        last_kill = fleet.kills[-1][0] if fleet.kills else time.time()
        # Then every workflow succeeds
        statuses = await settle(planned, scaled(90, 600))
        # and once dramatiq has handed out every redelivery, none is left unacked
        await poll_until(lambda: not undelivered(admin), 60, "every message acked")
        starts, runs = await anyio.to_thread.run_sync(read_records, admin)
        books = await audit(planned, statuses, starts, runs)
        recover = recovery_times(fleet, starts, runs)
        finished_ms = max(s.finished_at or 0 for s in statuses)
        interrupted = len(starts) - len(runs)
        report(
            "sigkill_workers",
            **books.figures(),
            kills=len(fleet.kills),
            interrupted=interrupted,
            recover_median_s=statistics.median(recover) if recover else 0.0,
            recover_max_s=max(recover, default=0.0),
            recover_after_last_kill_s=max(0.0, finished_ms / 1000 - last_kill),
            seed=seed,
            elapsed_s=time.monotonic() - started,
        )
    finally:
        admin.close()
        await store.aclose()
        store.close()
        broker.close()
    books.check()
    assert len(fleet.kills) >= scaled(5, 100), "too few kills to mean anything"
    assert interrupted > 0, "no kill hit a running task"


# -- 2. duplicate storms ----------------------------------------------------------------------
class Recorder:
    """Every execution, in-process: starts and finished runs (wall-clock seconds)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.starts: list[Start] = []
        self.runs: list[Run] = []

    def start(self, label: int) -> float:
        now = time.time()
        with self.lock:
            self.starts.append(Start(label, now))
        return now

    def finish(self, label: int, start: float, piped: tuple[Any, ...]) -> None:
        with self.lock:
            self.runs.append(Run(label, start, time.time(), 0, list(piped)))


class Duplicator(dramatiq.Middleware):
    """Re-enqueues each workflow delivery with the same message id (a broker redelivery).

    ``plan(message)`` says how: a list of delays in ms (None: enqueue now, "done": after the
    node's completion, from ``after_process_message``, which runs after WorkflowMiddleware's
    when this middleware is added before it). Copies of a message are not copied again.
    """

    def __init__(self, plan: Callable[[MessageProxy], list[int | str | None]]) -> None:
        self.plan = plan
        self.lock = threading.Lock()
        self.seen: set[str] = set()
        self.later: dict[str, tuple[dramatiq.Message[Any], int]] = {}
        self.injected = 0
        self.skipped = 0

    @staticmethod
    def copy(message: dramatiq.Message[Any]) -> dramatiq.Message[Any]:
        options = {k: v for k, v in message.options.items() if k not in ("eta", "redis_message_id")}
        return dataclasses.replace(message, options=options)

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        if OPTION not in message.options:
            return
        with self.lock:
            if message.message_id in self.seen:
                return
            self.seen.add(message.message_id)
        original = self.copy(message._message)
        plan = self.plan(message)
        at_done = sum(1 for p in plan if p == "done")
        if at_done:
            with self.lock:
                self.later[message.message_id] = (original, at_done)
        for p in plan:
            if not isinstance(p, str):
                broker.enqueue(self.copy(original), delay=p)
        with self.lock:
            self.injected += len(plan)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        with self.lock:
            later = self.later.pop(message.message_id, None)
        if later is not None:
            for _ in range(later[1]):
                broker.enqueue(self.copy(later[0]))

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        with self.lock:
            self.skipped += 1
        self.after_process_message(broker, message)


@dataclass
class Rig:
    broker: RedisBroker
    store: RedisStore
    admin: redis.Redis
    rec: Recorder
    dup: Duplicator
    leaf: Any
    other: Any
    worker: dramatiq.Worker

    def drain(self) -> None:
        for queue in self.broker.get_declared_queues():
            self.broker.join(queue, timeout=60_000)
        self.worker.join()


@contextlib.asynccontextmanager
async def duplicating_rig(
    url: str,
    plan: Callable[[MessageProxy], list[int | str | None]],
    threads: int,
    gate: Callable[[int], None] = lambda label: None,
) -> AsyncIterator[Rig]:
    """An in-process worker on a RedisBroker of ``url`` (direct mode), the Duplicator in front
    of WorkflowMiddleware; ``gate(label)`` runs inside each execution."""
    broker = RedisBroker(url=url)  # type: ignore[no-untyped-call]
    store = RedisStore(url=url)
    dup = Duplicator(plan)
    broker.add_middleware(dup)
    broker.add_middleware(WorkflowMiddleware(store))
    dramatiq.set_broker(broker)
    rec = Recorder()
    queue = f"dup_{uuid.uuid4().hex[:8]}"

    def leaf(label: int, *piped: Any) -> int:
        start = rec.start(label)
        gate(label)
        rec.finish(label, start, piped)
        return label

    main = dramatiq.actor(broker=broker, actor_name=f"{queue}_leaf", queue_name=queue)(leaf)
    other = dramatiq.actor(broker=broker, actor_name=f"{queue}_other", queue_name=f"{queue}_other")(
        leaf
    )
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=50)
    worker.start()
    admin = redis.Redis.from_url(url)
    try:
        yield Rig(broker, store, admin, rec, dup, main, other, worker)
    finally:
        worker.stop()
        broker.close()
        admin.close()
        await store.aclose()
        store.close()


async def finish_storm(r: Rig, planned: list[Planned], seconds: float) -> Books:
    """Settle every workflow, drain the broker, check that every delivery was acked, audit."""
    statuses = await settle(planned, seconds)
    await poll_until(lambda: not r.dup.later, 30, "every copy sent after completion")
    await anyio.to_thread.run_sync(r.drain)
    await poll_until(lambda: not undelivered(r.admin), 30, "every message acked")
    return await audit(planned, statuses, r.rec.starts, r.rec.runs)


@pytest.mark.timeout(scaled(90, 1800))
async def test_every_message_delivered_twice(servers: list[RedisServer]) -> None:
    # Given a worker whose every workflow delivery is delivered again with the same message
    # id: at once, 0-100 ms later, or after the node's completion
    server = start_redis()
    servers.append(server)
    started = time.monotonic()
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    rng_lock = threading.Lock()

    def plan(message: MessageProxy) -> list[int | str | None]:
        with rng_lock:
            return [rng.choice([None, rng.randint(0, 100), "done"])]

    n = scaled(40, 400)
    async with duplicating_rig(server.url, plan, threads=8) as r:
        # When random workflows run
        labels = itertools.count()
        planned = []
        for _ in range(n):
            shape = random_shape(rng, rng.randint(5, 30), 50)
            canvas = build(
                shape, lambda label, o: (r.other if o else r.leaf).message(label), labels
            )
            dag = compile(canvas)
            handle = await Workflow(canvas, audit=True).run(broker=r.broker, store=r.store)
            planned.append(Planned(handle, dag, [node.args[0] for node in dag.nodes]))
        books = await finish_storm(r, planned, scaled(60, 900))
        # Then every copy was injected, the books are straight, every delivery acked
        report(
            "duplicate_every_message",
            **books.figures(),
            duplicates_injected=r.dup.injected,
            skipped=r.dup.skipped,
            seed=seed,
            elapsed_s=time.monotonic() - started,
        )
    # a copy that passed its claim just before the original completed may start after that
    books.check(after_done=False)
    assert r.dup.injected >= books.nodes
    assert r.dup.skipped + books.reexecutions >= r.dup.injected, "a copy vanished"


COPIES = 10


@pytest.mark.timeout(scaled(60, 1800))
async def test_one_message_delivered_ten_times_at_once(servers: list[RedisServer]) -> None:
    # Given a worker on which every workflow delivery arrives ten times with one message id,
    # and the ten executions of a node wait for each other inside the actor, so that they
    # run, return and complete concurrently
    server = start_redis()
    servers.append(server)
    started = time.monotonic()
    barriers: dict[int, threading.Barrier] = {}
    broken: list[int] = []
    lock = threading.Lock()

    def gate(label: int) -> None:
        with lock:
            barrier = barriers.setdefault(label, threading.Barrier(COPIES))
        try:
            barrier.wait(timeout=20)
        except threading.BrokenBarrierError:
            broken.append(label)

    rounds = scaled(4, 40)
    width = 3  # the widest group: this many nodes' copies are in the barrier together
    async with duplicating_rig(
        server.url, lambda m: [None] * (COPIES - 1), threads=COPIES * width + 4, gate=gate
    ) as r:
        planned = []
        labels = itertools.count()
        for i in range(rounds):
            # When piped chains through groups (and a group feeding a group: a join) run
            m = r.leaf.message if i % 2 else r.other.message
            base = next(labels) * 10
            canvas = Chain(
                m(base),
                Group(m(base + 1), m(base + 2), m(base + 3)),
                Group(m(base + 4), Chain(m(base + 5), m(base + 6), pipe=True)),
                m(base + 7),
                pipe=i % 2 == 0,
            )
            dag = compile(canvas)
            handle = await Workflow(canvas, audit=True).run(broker=r.broker, store=r.store)
            planned.append(Planned(handle, dag, [node.args[0] for node in dag.nodes]))
            status = await handle.wait(timeout=60)
            assert status.state is State.SUCCEEDED, status
        books = await finish_storm(r, planned, 60)
        report(
            "duplicate_ten_at_once",
            **books.figures(),
            duplicates_injected=r.dup.injected,
            concurrent_copies=COPIES,
            skipped=r.dup.skipped,
            elapsed_s=time.monotonic() - started,
        )
    # Then all ten copies of every node ran together (no barrier broke), one completion of each
    # counted and released its successors once, never early, and every result is right
    assert not broken, f"the copies of {sorted(set(broken))} did not all run at once"
    books.check()
    assert books.executions == COPIES * books.nodes
    assert r.dup.injected == (COPIES - 1) * books.nodes
    assert Counter(s.label for s in r.rec.starts) == Counter(
        {label: COPIES for p in planned for label in p.labels}
    )
