"""RedisStore on a Redis Cluster: workflows on every shard, and every script in one slot.

A module fixture starts a local 3-master Redis Cluster (three ``redis-server
--cluster-enabled yes`` on loopback ports, joined by ``redis-cli --cluster create``). The
store runs in cluster mode (``RedisStore(url, cluster=True)``), the broker is RabbitMQ
(queues unique to each test), so workflows run in ready mode.

1. ``test_random_workflows_on_every_shard_keep_the_books``: ~60 random workflows (chains,
   piped chains, groups, group after group, graphs, delays) whose ids land on all three shards
   all SUCCEED with the right results, and the audit books of the chaos tests hold (every node
   released exactly once, never early, nothing lost; ``tests.chaos.test_kill.audit``). Nothing
   is left in the ready sets, and every script call was routed straight to the shard owning
   its keys (no MOVED/ASK/CROSSSLOT reply on any node).
2. ``test_cancel_failure_retry_pause_resume_in_cluster_mode``: cancel, a failure whose
   ``on_failure`` fires once, retry, pause and resume, on workflows of every shard.
3. Every script declares all its keys, all in one slot:

   * statically: every ``redis.call`` of every ``lua/*.lua`` names its keys (the key positions
     Redis's ``COMMAND INFO`` gives for the command) only as ``KEYS[...]`` or the locals
     ``_lib.lua`` binds to ``KEYS[1..14]`` (in ``_keys.PARTS`` order): never a name built from
     ARGV or by concatenation;
   * the keys of a workflow (``_keys.workflow_keys``) hash to one slot, for awkward ids too;
   * dynamically: ``MONITOR`` on every node records each EVALSHA the tests send and every
     command the script runs; each script's declared keys share one slot owned by the node
     that ran it, and each command inside it touches only declared keys. Both checkers are
     also shown to catch a violation.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import random
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import dramatiq
import pytest
import redis
import redis.cluster
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name, xq_name
from redis.crc import key_slot

import aioworkflow
from aioworkflow import (
    Chain,
    Group,
    RedisStore,
    State,
    Workflow,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowMiddleware,
    _keys,
    compile,
)
from aioworkflow._dramatiq import direct_mode, shares_store_redis
from aioworkflow._store._scripts import SOURCES, ScriptName
from aioworkflow.errors import ConfigurationError
from tests._canvas_strategies import build
from tests.chaos.test_kill import Planned, Recorder, audit, random_shape, settle
from tests.conftest import free_port, poll_until, rabbitmq_broker, start_redis

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    from aioworkflow import WorkflowHandle
    from tests.conftest import RedisServer

pytestmark = pytest.mark.cluster

LUA_DIR = Path(aioworkflow.__file__).parent / "lua"
SHARDS = 3
SLOTS = 16384


# -- the cluster --------------------------------------------------------------------------
@dataclass
class Cluster:
    """Three running masters and the slot ranges each one serves."""

    servers: list[RedisServer]
    #: (first slot, last slot, port of the master serving them)
    ranges: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def ports(self) -> list[int]:
        return [s.port for s in self.servers]

    @property
    def url(self) -> str:
        return self.servers[0].url

    def owner(self, slot: int) -> int:
        """Port of the master serving ``slot``."""
        for lo, hi, port in self.ranges:
            if lo <= slot <= hi:
                return port
        raise AssertionError(f"slot {slot} is served by no node")

    def node_of(self, workflow_id: str) -> int:
        """Port of the master holding the workflow's keys."""
        return self.owner(key_slot(_keys.workflow_keys(workflow_id)[0].encode()))

    def info(self, port: int, section: str) -> dict[str, Any]:
        with contextlib.closing(redis.Redis(port=port)) as c:
            return dict(c.info(section))

    def reset_stats(self) -> None:
        for port in self.ports:
            with contextlib.closing(redis.Redis(port=port)) as c:
                c.config_resetstat()

    def misrouted_or_failed(self) -> dict[int, dict[str, int]]:
        """Per node, since ``reset_stats``: cluster redirections and slot errors (MOVED, ASK,
        CROSSSLOT, TRYAGAIN, CLUSTERDOWN), commands rejected or failed (``commandstats``;
        EVALSHA may fail only with NOSCRIPT, once per script and node, before redis-py loads
        it). Redis 7.0's ``ERR`` for redis-py's ``CLIENT SETINFO`` handshake is not counted."""
        out: dict[int, dict[str, int]] = {}
        for port in self.ports:
            errors = {
                k.removeprefix("errorstat_"): int(v["count"])
                for k, v in self.info(port, "errorstats").items()
            }
            bad = {k: v for k, v in errors.items() if k in _REDIRECTS}
            for k, v in self.info(port, "commandstats").items():
                cmd = k.removeprefix("cmdstat_")
                failed = int(v.get("failed_calls", 0))
                if cmd == "evalsha":
                    failed -= errors.get("NOSCRIPT", 0)
                if failed:
                    bad[f"{cmd} failed"] = failed
                if int(v.get("rejected_calls", 0)):
                    bad[f"{cmd} rejected"] = int(v["rejected_calls"])
            if bad:
                out[port] = bad
        return out


_REDIRECTS = ("MOVED", "ASK", "CROSSSLOT", "TRYAGAIN", "CLUSTERDOWN")


def _cluster_ready(ports: list[int]) -> bool:
    """Every node reports cluster_state:ok, knows all masters, and sees every slot served."""
    for port in ports:
        with contextlib.closing(redis.Redis(port=port, socket_timeout=2)) as c:
            info = c.cluster("INFO")
            if not isinstance(info, dict):  # pragma: no cover - redis-py parses it
                return False
            if info.get("cluster_state") != "ok":
                return False
            if int(info.get("cluster_known_nodes", 0)) != len(ports):
                return False
            if int(info.get("cluster_slots_ok", 0)) != SLOTS:
                return False
    return True


def _slot_ranges(port: int) -> list[tuple[int, int, int]]:
    with contextlib.closing(redis.Redis(port=port)) as c:
        raw = c.cluster("SLOTS")
    # the RESP reply: [[first slot, last slot, [master host, master port, id, ...], ...], ...]
    assert isinstance(raw, list), raw
    return sorted((int(entry[0]), int(entry[1]), int(entry[2][1])) for entry in raw)


def _distinct_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        p = free_port()
        if p not in ports:
            ports.append(p)
    return ports


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A 3-master Redis Cluster on loopback ports; every process stopped at the end."""
    cli = shutil.which("redis-cli")
    if cli is None or shutil.which("redis-server") is None:
        pytest.fail(
            "redis-server and redis-cli must be on PATH for the cluster tests: install them "
            "(apt-get install redis-server, which ships both)"
        )
    # client ports and cluster bus ports (the default bus port, port + 10000, may not exist)
    ports = _distinct_ports(2 * SHARDS)
    servers: list[RedisServer] = []
    try:
        for port, bus in zip(ports[:SHARDS], ports[SHARDS:], strict=True):
            servers.append(
                start_redis(
                    *("--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"),
                    *("--cluster-port", str(bus), "--cluster-node-timeout", "5000"),
                    port=port,
                )
            )
        addrs = [f"127.0.0.1:{s.port}" for s in servers]
        created = subprocess.run(
            [cli, "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        if created.returncode != 0:
            pytest.fail(
                f"redis-cli --cluster create failed ({created.returncode}): "
                f"{created.stdout.decode(errors='replace')}{created.stderr.decode(errors='replace')}"
            )
        deadline = time.monotonic() + 30
        while not _cluster_ready([s.port for s in servers]):
            if time.monotonic() > deadline:
                pytest.fail("the Redis Cluster did not reach cluster_state:ok within 30 s")
            time.sleep(0.05)
        c = Cluster(servers, _slot_ranges(servers[0].port))
        assert {port for _, _, port in c.ranges} == set(c.ports), "every master serves slots"
        assert sum(hi - lo + 1 for lo, hi, _ in c.ranges) == SLOTS
        yield c
    finally:
        for server in servers:
            if server.proc is not None and server.proc.poll() is None:
                server.proc.terminate()
                try:
                    server.proc.wait(10)
                except subprocess.TimeoutExpired:
                    server.proc.kill()
                    server.proc.wait(10)
            shutil.rmtree(server.workdir, ignore_errors=True)


# -- MONITOR on every node ------------------------------------------------------------------
_LINE = re.compile(r"^\+?(\S+) \[(\d+) ([^\]]*)\] (.*)$")
_ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Seen:
    """One command a node executed: from a client, or from a script (``lua``)."""

    lua: bool
    args: tuple[str, ...]


def parse_monitor_line(line: str) -> Seen | None:
    """A MONITOR line (``<time> [<db> <client>] "cmd" "arg" ...``), or None for "OK"."""
    m = _LINE.match(line)
    if m is None:
        return None
    return Seen(m.group(3) == "lua", tuple(_ARG.findall(m.group(4))))


class Monitors:
    """MONITOR connections to every node, each read by a thread into a list of ``Seen``."""

    def __init__(self, ports: list[int]) -> None:
        self.seen: dict[int, list[Seen]] = {p: [] for p in ports}
        self._socks: dict[int, socket.socket] = {}
        self._readers: list[Any] = []
        self._threads: list[threading.Thread] = []
        self._marks: dict[int, str] = {}
        self._found: dict[int, threading.Event] = {p: threading.Event() for p in ports}
        for port in ports:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"MONITOR\r\n")
            reader = sock.makefile("rb")
            self._readers.append(reader)
            if reader.readline().strip() != b"+OK":
                raise AssertionError(f"MONITOR refused on {port}")
            sock.settimeout(None)
            self._socks[port] = sock
            t = threading.Thread(target=self._read, args=(port, reader), daemon=True)
            t.start()
            self._threads.append(t)

    def _read(self, port: int, reader: Any) -> None:
        with contextlib.suppress(OSError, ValueError):
            for raw in reader:
                seen = parse_monitor_line(raw.decode(errors="replace").rstrip("\r\n"))
                if seen is None:
                    continue
                mark = self._marks.get(port)
                if (
                    mark is not None
                    and seen.args[-1:] == (mark,)
                    and seen.args[0].lower() == "echo"
                ):
                    self._found[port].set()
                    continue
                self.seen[port].append(seen)

    def stop(self) -> dict[int, list[Seen]]:
        """Wait until each monitor has read everything up to now (an ECHO marker), then close."""
        for port in self.seen:
            mark = uuid.uuid4().hex
            self._marks[port] = mark
            with contextlib.closing(redis.Redis(port=port)) as c:
                c.echo(mark)
            if not self._found[port].wait(30):
                raise AssertionError(f"MONITOR on {port} never saw its end marker")
        self.close()
        return self.seen

    def close(self) -> None:
        for sock in self._socks.values():
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for t in self._threads:
            t.join(10)
        for reader in self._readers:
            reader.close()


# -- key positions, from Redis itself ---------------------------------------------------------
class KeySpecs:
    """Which arguments of a command are keys (``COMMAND INFO``: first, last, step)."""

    def __init__(self, port: int) -> None:
        self._client = redis.Redis(port=port)
        self._cache: dict[str, dict[str, Any]] = {}

    def close(self) -> None:
        self._client.close()

    def _info(self, cmd: str) -> dict[str, Any]:
        name = cmd.lower()
        if name not in self._cache:
            reply = self._client.execute_command("COMMAND", "INFO", name)  # type: ignore[no-untyped-call]
            info = reply.get(name) if isinstance(reply, dict) else None
            if info is None:
                raise AssertionError(f"Redis does not know the command {cmd!r}")
            self._cache[name] = info
        return self._cache[name]

    def positions(self, cmd: str, nargs: int) -> list[int] | None:
        """Indices (1-based, after the command name) of the key arguments among ``nargs``;
        None where they cannot be told from the arguments' positions (movable keys)."""
        info = self._info(cmd)
        if "movablekeys" in info["flags"]:
            return None
        first, last, step = info["first_key_pos"], info["last_key_pos"], info["step_count"]
        if first == 0:
            return []
        last = nargs + 1 + last if last < 0 else last
        return list(range(first, min(last, nargs) + 1, step))

    def touches_keyspace_without_keys(self, cmd: str) -> bool:
        """KEYS, SCAN, RANDOMKEY, FLUSHDB...: keys a script could reach without declaring."""
        info = self._info(cmd)
        return info["first_key_pos"] == 0 and "@keyspace" in info["acl_categories"]


# -- checker 1: static scan of the Lua sources ------------------------------------------------
_CALL = re.compile(r"redis\.p?call\s*\(")


def _call_args(src: str, start: int) -> tuple[list[str], int]:
    """The top-level comma-separated arguments of the call whose "(" ends at ``start``."""
    depth, i, quote = 1, start, ""
    args: list[str] = []
    cur = start
    while depth:
        ch = src[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 1:
            args.append(src[cur:i].strip())
            cur = i + 1
        i += 1
    args.append(src[cur : i - 1].strip())
    return [a for a in args if a], i


def key_locals(lib: str) -> dict[str, int]:
    """The locals ``_lib.lua`` binds to ``KEYS[n]``: name -> n."""
    m = re.search(r"local\s+([A-Z_,\s]+?)\s*=\s*((?:KEYS\[\d+\][,\s]*)+)", lib)
    assert m is not None, "_lib.lua binds no locals to KEYS"
    names = [n.strip() for n in m.group(1).split(",")]
    indices = [int(x) for x in re.findall(r"KEYS\[(\d+)\]", m.group(2))]
    assert len(names) == len(indices)
    return dict(zip(names, indices, strict=True))


def static_key_problems(name: str, src: str, names: set[str], specs: KeySpecs) -> list[str]:
    """Every ``redis.call`` of ``src`` whose keys are not plain ``KEYS[...]`` or key locals."""
    names = set(names)
    # a loop over declared keys (``for _, set in ipairs({FAILED, HELD})``) declares its variable
    for m in re.finditer(r"for\s+\w+\s*,\s*(\w+)\s+in\s+ipairs\(\{([^{}]*)\}\)", src):
        if all(x.strip() in names for x in m.group(2).split(",")):
            names.add(m.group(1))
    declared = re.compile(r"KEYS\[[^\[\]]+\]|" + "|".join(map(re.escape, sorted(names))))
    problems = []
    for m in _CALL.finditer(src):
        line = src.count("\n", 0, m.start()) + 1
        args, _ = _call_args(src, m.end())
        where = f"{name}:{line}: redis.call({', '.join(args)})"
        lit = re.fullmatch(r"'([A-Za-z]+)'|\"([A-Za-z]+)\"", args[0]) if args else None
        if lit is None:
            problems.append(f"{where}: the command is not a literal")
            continue
        cmd = lit.group(1) or lit.group(2)
        if specs.touches_keyspace_without_keys(cmd):
            problems.append(f"{where}: {cmd} reaches keys no script declares")
            continue
        positions = specs.positions(cmd, len(args) - 1)
        if positions is None:
            problems.append(f"{where}: {cmd} has movable keys")
            continue
        problems += [
            f"{where}: key argument {args[p]!r} is not declared in KEYS"
            for p in positions
            if not declared.fullmatch(args[p])
        ]
    return problems


#: The store's scripts by the SHA1 of their full source (what EVALSHA names).
SHAS = {hashlib.sha1(src.encode()).hexdigest(): name for name, src in SOURCES.items()}


# -- checker 2: what the nodes executed -------------------------------------------------------
@dataclass
class ScriptRun:
    """One EVALSHA a node executed, with the commands the script ran."""

    port: int
    sha: str
    keys: tuple[str, ...]
    calls: list[tuple[str, ...]] = field(default_factory=list)


def script_runs(seen: dict[int, list[Seen]]) -> tuple[list[ScriptRun], list[str]]:
    """Group each node's MONITOR stream into script runs; lua commands outside one are odd."""
    runs: list[ScriptRun] = []
    problems: list[str] = []
    for port, lines in seen.items():
        current: ScriptRun | None = None
        for s in lines:
            if s.lua:
                if current is None:
                    problems.append(f"{port}: a script command outside any EVAL: {s.args}")
                else:
                    current.calls.append(s.args)
                continue
            current = None
            cmd = s.args[0].lower() if s.args else ""
            if cmd in ("evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro"):
                n = int(s.args[2])
                current = ScriptRun(port, s.args[1], s.args[3 : 3 + n])
                runs.append(current)
    return runs, problems


def dynamic_key_problems(
    runs: list[ScriptRun], owner: Callable[[int], int], specs: KeySpecs
) -> list[str]:
    """Scripts whose keys span slots or another node's slot, or that touch undeclared keys."""
    problems: list[str] = []
    for r in runs:
        name = SHAS.get(r.sha, r.sha[:8])
        slots = {key_slot(k.encode()) for k in r.keys}
        if len(slots) != 1:
            problems.append(f"{r.port}: {name}.lua keys span slots {sorted(slots)}")
            continue
        (slot,) = slots
        if owner(slot) != r.port:
            problems.append(f"{r.port}: {name}.lua ran on a node not serving slot {slot}")
        declared = set(r.keys)
        for call in r.calls:
            cmd, args = call[0], call[1:]
            if specs.touches_keyspace_without_keys(cmd):
                problems.append(f"{r.port}: {name}.lua ran {cmd}")
                continue
            positions = specs.positions(cmd, len(args))
            if positions is None:
                problems.append(f"{r.port}: {name}.lua ran {cmd} (movable keys)")
                continue
            problems += [
                f"{r.port}: {name}.lua touched undeclared key {args[p - 1]!r} ({cmd})"
                for p in positions
                if args[p - 1] not in declared
            ]
    return problems


def check_script_runs(cluster: Cluster, seen: dict[int, list[Seen]]) -> Counter[ScriptName]:
    """Assert the declared-keys/one-slot rule on everything the nodes ran; count scripts."""
    runs, problems = script_runs(seen)
    specs = KeySpecs(cluster.ports[0])
    try:
        problems += dynamic_key_problems(runs, cluster.owner, specs)
    finally:
        specs.close()
    assert not problems, "\n".join(sorted(set(problems))[:20])
    unknown = {r.sha for r in runs if r.sha not in SHAS}
    assert not unknown, f"scripts that are not aioworkflow's: {unknown}"
    for r in runs:  # ready mode: the 14 workflow keys, no dramatiq queue keys
        assert len(r.keys) == len(_keys.PARTS), (SHAS[r.sha], r.keys)
    # a NOSCRIPT reply (the first call of a script on a node) runs nothing: not counted
    return Counter(SHAS[r.sha] for r in runs if r.calls)


# -- the runtime: RabbitMQ broker, cluster store, in-process worker ----------------------------
@dataclass
class Rig:
    broker: RabbitmqBroker
    store: RedisStore
    middleware: WorkflowMiddleware
    rec: Recorder
    leaf: Any
    other: Any
    flaky: Any
    notes: Any
    noted: list[Any]
    worker: dramatiq.Worker
    queues: list[str]
    broken: dict[str, bool]
    gate: Any
    #: ``gates["open"]``: the event the gate actor waits for (replaced for each use)
    gates: dict[str, threading.Event]

    async def drain(self) -> None:
        """Wait until the rig's queues (and their delay queues) are empty, then idle."""

        def empty() -> bool:
            return all(sum(self.broker.get_queue_message_counts(q)[:2]) == 0 for q in self.queues)

        await poll_until(empty, 30, "the RabbitMQ queues to empty")
        await anyio.to_thread.run_sync(self.worker.join)


@contextlib.asynccontextmanager
async def cluster_rig(cluster: Cluster) -> AsyncIterator[Rig]:
    """RabbitMQ (queues unique to this test) + RedisStore in cluster mode + a worker."""
    broker = rabbitmq_broker()
    store = RedisStore(url=cluster.url, cluster=True)
    middleware = WorkflowMiddleware(store, reconcile_interval=0)
    broker.add_middleware(middleware)
    dramatiq.set_broker(broker)
    rec = Recorder()
    noted: list[Any] = []
    broken = {"yes": True}
    gates = {"open": threading.Event()}
    q = f"cl_{uuid.uuid4().hex[:10]}"

    def leaf(label: int, *piped: Any) -> int:
        start = rec.start(label)
        rec.finish(label, start, piped)
        return label

    def flaky(label: int, *piped: Any) -> int:
        if broken["yes"]:
            raise RuntimeError(f"broken {label}")
        return leaf(label, *piped)

    def gate(label: int, *piped: Any) -> int:
        aioworkflow.report_progress(0, note="at the gate")  # progress.lua runs in cluster mode
        if not gates["open"].wait(20):
            raise RuntimeError("the gate was never opened")
        return leaf(label, *piped)

    def note(*args: Any) -> None:
        noted.append(args)

    def actor(fn: Callable[..., Any], name: str, queue: str, **options: Any) -> Any:
        return dramatiq.actor(broker=broker, actor_name=f"{q}_{name}", queue_name=queue, **options)(
            fn
        )

    queues = [q, f"{q}_other"]
    rig = Rig(
        broker=broker,
        store=store,
        middleware=middleware,
        rec=rec,
        leaf=actor(leaf, "leaf", q),
        other=actor(leaf, "other", f"{q}_other"),
        flaky=actor(flaky, "flaky", q, max_retries=0),
        notes=actor(note, "note", q),
        noted=noted,
        worker=dramatiq.Worker(broker, worker_threads=8, worker_timeout=50),
        queues=queues,
        broken=broken,
        gate=actor(gate, "gate", f"{q}_other", max_retries=0),
        gates=gates,
    )
    # redis-py 8.1's asyncio RedisCluster sends its very first command, issued before it has
    # read the slot map, to a default node (a MOVED reply, which it follows); load the map
    # first so that the tests can require every command to reach the right node directly
    await store.aio()._client.initialize()
    rig.worker.start()
    try:
        yield rig
    finally:
        rig.worker.stop()
        for name in queues:
            for each in (name, dq_name(name), xq_name(name)):
                with contextlib.suppress(Exception):
                    broker.channel.queue_delete(each)
        broker.close()
        await store.aclose()
        store.close()


def canvas_for(i: int, rng: random.Random, r: Rig, labels: Iterator[int]) -> Any:
    """The i-th canvas: fixed shapes (group after group, piped chains) among random ones."""
    m = r.leaf.message
    o = r.other.message
    kind = i % 6
    if kind == 0:  # group after group (a join), then a node
        return Chain(
            Group(*(m(next(labels)) for _ in range(rng.randint(2, 5)))),
            Group(*(o(next(labels)) for _ in range(rng.randint(2, 5)))),
            m(next(labels)),
        )
    if kind == 1:  # a piped chain through a group
        return Chain(
            m(next(labels)),
            Group(m(next(labels)), o(next(labels))),
            Chain(o(next(labels)), m(next(labels)), pipe=True),
            m(next(labels)),
            pipe=True,
        )
    shape = random_shape(rng, rng.randint(3, 20), 30)
    return build(shape, lambda label, other: (o if other else m)(label), labels)


async def submit(r: Rig, canvas: Any, **kwargs: Any) -> Planned:
    dag = compile(canvas)
    handle = await Workflow(canvas, audit=True, **kwargs).run(broker=r.broker, store=r.store)
    return Planned(handle, dag, [node.args[0] for node in dag.nodes])


def ids_on_every_shard(cluster: Cluster, n: int) -> list[str]:
    """``n`` fresh workflow ids, round robin over the shards (so each shard gets some)."""
    by_port: dict[int, list[str]] = {p: [] for p in cluster.ports}
    while min(len(v) for v in by_port.values()) < n:
        wf = uuid.uuid4().hex
        by_port[cluster.node_of(wf)].append(wf)
    return [by_port[p][i] for i in range(n) for p in cluster.ports]


# -- 1. many random workflows ---------------------------------------------------------------
@pytest.mark.timeout(60)
async def test_random_workflows_on_every_shard_keep_the_books(cluster: Cluster) -> None:
    # Given a RabbitMQ worker on a RedisStore in cluster mode, every node watched by MONITOR
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    monitors = Monitors(cluster.ports)
    try:
        async with cluster_rig(cluster) as r:
            cluster.reset_stats()
            assert r.store.cluster
            assert isinstance(r.store.client, redis.cluster.RedisCluster)
            assert not direct_mode(r.store, r.broker)
            # a RedisBroker on a cluster node would not make it direct either
            node_broker = RedisBroker(url=cluster.url)  # type: ignore[no-untyped-call]
            assert not shares_store_redis(r.store, node_broker)
            node_broker.close()
            # When 60 workflows (random ids: they land on every shard) run
            labels = itertools.count()
            planned = [await submit(r, canvas_for(i, rng, r, labels)) for i in range(60)]
            statuses = await settle(planned, 30)
            await r.drain()
            # Then every workflow SUCCEEDED with the right result, and the books are straight:
            # every node released once, after its predecessors, ran, counted once; none lost
            books = await audit(planned, statuses, r.rec.starts, r.rec.runs)
            books.check()
            assert books.executions == books.nodes, "a node ran twice"
            # the workflows live on all three shards: their keys are on the owning master
            shards = Counter(cluster.node_of(p.handle.id) for p in planned)
            assert set(shards) == set(cluster.ports), f"shards used: {shards} (seed {seed})"
            for p in planned:
                port = cluster.node_of(p.handle.id)
                meta = _keys.workflow_keys(p.handle.id)[0]
                with contextlib.closing(redis.Redis(port=port)) as node:
                    assert node.cluster("KEYSLOT", meta) == key_slot(meta.encode())
                    assert node.hget(meta, "mode") == b"r", "cluster mode is ready mode"
                    assert node.hget(meta, "state") == b"SUCCEEDED"
            # nothing is left in any ready set (an age-0 reconcile finds nothing to re-send)
            for p in planned:
                rec = r.store.sync.reconcile(p.handle.id, 0, 1000, [])
                assert (rec.status, rec.extra, rec.released) == (1, 0, ()), p.handle.id
            # the reconciler's sweep over the (unhashed) active index works and forgets them
            assert r.middleware.reconcile_once(r.broker) == 0
            admin: Any = r.store.client
            active = {x.decode() for x in admin.zrange(_keys.ACTIVE, 0, -1)}
            assert not active & {p.handle.id for p in planned}
        seen = monitors.stop()
    finally:
        monitors.close()
    # and every script call went straight to the node serving its slot, declared every key
    # it touched, all in that one slot
    counts = check_script_runs(cluster, seen)
    tasks = books.nodes
    assert counts[ScriptName.START] == len(planned)
    assert counts[ScriptName.CLAIM] >= tasks
    assert counts[ScriptName.COMPLETE] >= tasks
    assert counts[ScriptName.RECONCILE] >= len(planned)
    assert not cluster.misrouted_or_failed()


# -- 2. control operations ------------------------------------------------------------------
@pytest.mark.timeout(60)
async def test_cancel_failure_retry_pause_resume_in_cluster_mode(cluster: Cluster) -> None:
    monitors = Monitors(cluster.ports)
    try:
        async with cluster_rig(cluster) as r:
            cluster.reset_stats()
            ids = iter(ids_on_every_shard(cluster, 3))
            labels = itertools.count()
            handles: list[WorkflowHandle] = []

            async def start(canvas: Any, **kwargs: Any) -> WorkflowHandle:
                p = await submit(r, canvas, id=next(ids), **kwargs)
                handles.append(p.handle)
                return p.handle

            # Given, on each shard, a workflow whose first node fails (max_retries=0) with an
            # on_failure callback
            failing = [
                await start(
                    Chain(r.flaky.message(next(labels)), r.leaf.message(next(labels))),
                    on_failure=r.notes.message("failed"),
                )
                for _ in cluster.ports
            ]
            for h in failing:
                status = await h.wait(timeout=20)
                # Then it FAILED, naming the node; on_failure fires once per workflow
                assert status.state is State.FAILED, status
                assert (status.failed_node, status.exc_type) == (0, "RuntimeError")
                with pytest.raises(WorkflowFailed):
                    await h.result(timeout=1)
            await poll_until(lambda: len(r.noted) >= len(failing), 20, "on_failure callbacks")
            await r.drain()
            assert sorted(r.noted) == sorted(("failed", h.id) for h in failing)
            # When the cause is fixed and each is retried (twice: the second is a no-op)
            r.broken["yes"] = False
            for h in failing:
                first, second = await h.retry(), await h.retry()
                assert (first.changed, first.state, second.changed) == (True, State.RUNNING, False)
            for h in failing:
                assert (await h.wait(timeout=20)).state is State.SUCCEEDED
            # When workflows are paused while their first node (a gate) runs, then resumed
            before = len(r.rec.runs)
            pausing = []
            for _ in cluster.ports:
                canvas = Chain(
                    r.gate.message(next(labels)),
                    Group(*(r.leaf.message(next(labels)) for _ in range(20))),
                    r.leaf.message(next(labels)),
                )
                pausing.append(await start(canvas))
            for h in pausing:
                paused = await h.pause()
                assert (paused.changed, paused.state) == (True, State.PAUSED)
            r.gates["open"].set()
            await r.drain()
            # Then only the gates ran; what they released is held until resume
            assert len(r.rec.runs) - before == len(pausing)
            for h in pausing:
                status = await h.status()
                assert (status.state, status.succeeded) == (State.PAUSED, 1)
                resumed = await h.resume()
                assert (resumed.changed, resumed.released) == (True, 20)
            for h in pausing:
                assert (await h.wait(timeout=20)).state is State.SUCCEEDED
            # and after resume each node ran exactly once
            assert len(r.rec.runs) - before == 22 * len(pausing)
            assert max(Counter(run.label for run in r.rec.runs).values()) == 1
            # When workflows are cancelled while their first node (a gate) runs
            r.gates["open"] = threading.Event()
            before = len(r.rec.runs)
            cancelling = []
            for _ in cluster.ports:
                canvas = Chain(r.gate.message(next(labels)), r.leaf.message(next(labels)))
                cancelling.append(await start(canvas))
            for h in cancelling:
                answer = await h.cancel()
                assert (answer.changed, answer.state) == (True, State.CANCELLED)
                again = await h.cancel()
                assert (again.changed, again.state) == (False, State.CANCELLED)
            r.gates["open"].set()
            await r.drain()
            # Then they stay cancelled: a gate that was already running finished, nothing after
            assert len(r.rec.runs) - before <= len(cancelling)
            for h in cancelling:
                status = await h.status()
                assert status.state is State.CANCELLED
                assert status.succeeded <= 1
                with pytest.raises(WorkflowCancelled):
                    await h.result(timeout=1)
            assert {cluster.node_of(h.id) for h in handles} == set(cluster.ports)
        seen = monitors.stop()
    finally:
        monitors.close()
    counts = check_script_runs(cluster, seen)
    for name in ScriptName:
        if name is not ScriptName.RECONCILE:
            assert counts[name] > 0, f"{name} never ran"
    assert not cluster.misrouted_or_failed()


# -- 3. every script declares all its keys, all in one slot ----------------------------------
def test_every_lua_script_names_its_keys_only_through_keys(cluster: Cluster) -> None:
    # Given the Lua sources and the key positions of each command (COMMAND INFO)
    lib = (LUA_DIR / "_lib.lua").read_text()
    bound = key_locals(lib)
    # the locals _lib.lua binds to KEYS[1..14] are the parts of _keys, in the same order
    assert [n.lower() for n in bound] == list(_keys.PARTS)
    assert list(bound.values()) == list(range(1, len(_keys.PARTS) + 1))
    scripts = sorted(p.stem for p in LUA_DIR.glob("*.lua") if p.stem not in ("_lib", "_machine"))
    assert scripts == sorted(n.value for n in ScriptName), "a script the store never loads"
    specs = KeySpecs(cluster.ports[0])
    try:
        problems: list[str] = []
        calls = 0
        for path in sorted(LUA_DIR.glob("*.lua")):
            src = path.read_text()
            calls += len(_CALL.findall(src))
            problems += static_key_problems(path.name, src, set(bound), specs)
        # Then every key argument of every redis.call is KEYS[...] or a KEYS local
        assert calls > 50
        assert not problems, "\n".join(problems)
        # and the checker does catch a key built from ARGV, a literal key, and KEYS/SCAN
        bad = (
            "redis.call('HGET', 'aiowf:' .. ARGV[1] .. ':meta', 'state')\n"
            "redis.call('DEL', HELD, 'aiowf:active')\n"
            "redis.call('SET', KEYS[1] .. ':x', 1)\n"
            "redis.call('KEYS', 'aiowf:*')\n"
            "redis.call(ARGV[2], META)\n"
            "for _, k in ipairs({META, ARGV[1]}) do redis.call('GET', k) end\n"
        )
        assert len(static_key_problems("bad.lua", bad, set(bound), specs)) == 6
    finally:
        specs.close()


AWKWARD_IDS = [
    "order-42", "a:b", "a}b", "{x}", "x{", "{", "{}", "ab}}", "ünïcode", "x" * 200, "}lead",
    "}",
]  # fmt: skip


@pytest.mark.parametrize("workflow_id", [uuid.uuid4().hex, *AWKWARD_IDS])
def test_every_key_of_a_workflow_shares_one_slot(workflow_id: str) -> None:
    keys = _keys.workflow_keys(workflow_id)
    if workflow_id.startswith("}"):
        # Given an id whose hash tag would be empty ("aiowf:{}...}:meta": Redis then hashes
        # each whole key, and the 14 keys scatter over slots)
        assert len({key_slot(k.encode()) for k in keys}) > 1
        # Then Workflow refuses it up front, before anything is stored
        with pytest.raises(ConfigurationError, match="hash tag"):
            Workflow(Chain(), id=workflow_id)
        return
    # Given any other id: a workflow may be run under it
    Workflow(Chain(), id=workflow_id)
    # Then the 14 keys every script receives hash to one cluster slot
    assert len(keys) == len(_keys.PARTS) == len(set(keys))
    assert len({key_slot(k.encode()) for k in keys}) == 1, keys


def test_the_monitor_checker_catches_undeclared_and_cross_slot_keys(cluster: Cluster) -> None:
    # Given MONITOR streams of scripts that break the rule in each way it can be broken
    a, b = _keys.workflow_keys("a"), _keys.workflow_keys("b")
    slot_a = key_slot(a[0].encode())
    port_a = cluster.owner(slot_a)
    elsewhere = next(p for p in cluster.ports if p != port_a)
    sha = next(iter(SHAS))

    def ev(keys: list[str], *calls: tuple[str, ...]) -> list[Seen]:
        return [Seen(False, ("evalsha", sha, str(len(keys)), *keys, "a")),
                *(Seen(True, c) for c in calls)]  # fmt: skip

    good = ev(a, ("hget", a[0], "state"), ("time",), ("del", a[7], a[6]))
    seen = {
        port_a: [
            *good,
            *ev(a, ("hset", b[0], "x", "1")),  # undeclared key
            *ev([a[0], b[0]], ("get", a[0])),  # keys in two slots
            *ev(a, ("keys", "*")),  # reaches the keyspace
            *ev(a, ("del", a[0], "aiowf:active")),  # an undeclared key among several
        ],
        elsewhere: ev(a, ("get", a[1])),  # on a node that does not serve the slot
    }
    runs, problems = script_runs(seen)
    specs = KeySpecs(cluster.ports[0])
    try:
        problems += dynamic_key_problems(runs, cluster.owner, specs)
        assert not dynamic_key_problems(script_runs({port_a: good})[0], cluster.owner, specs)
    finally:
        specs.close()
    # Then each one is reported
    assert len(problems) == 5, problems
    # and a command from a script with no EVAL in front of it is reported too
    assert script_runs({port_a: [Seen(True, ("get", "k"))]})[1]
    # and a real MONITOR line parses into the command and its arguments
    line = '+1795425078.837325 [0 lua] "set" "k1" "a\\"b\\\\"'
    assert parse_monitor_line(line) == Seen(True, ("set", "k1", 'a\\"b\\\\'))


async def test_listing_on_a_cluster_reads_every_index_shard(cluster: Cluster) -> None:
    """list_workflows on Redis Cluster: the index shards live on several nodes, each entry is
    written by the client at submit (no script crosses a slot), and listing finds them all."""
    shard_nodes = {cluster.owner(key_slot(k.encode())) for k in _keys.index_keys()}
    assert len(shard_nodes) > 1  # the index is spread over the cluster
    async with cluster_rig(cluster) as r:
        ids = ids_on_every_shard(cluster, 12)
        name = f"cl-{uuid.uuid4().hex}"  # the cluster is shared by the module's tests
        for i, wid in enumerate(ids):
            handle = await Workflow(Chain(), id=wid, name=name, labels={"n": str(i % 2)}).run(
                broker=r.broker, store=r.store
            )
            assert (await handle.wait(timeout=30)).state is State.SUCCEEDED
        found = aioworkflow.list_workflows(store=r.store, name=name, limit=None)
        listed = [st async for st in found]
        assert sorted(st.id for st in listed) == sorted(ids)
        odd = [st async for st in aioworkflow.list_workflows(store=r.store, name=name, label="n=1")]
        assert sorted(st.id for st in odd) == sorted(ids[1::2])
