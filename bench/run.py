"""Throughput side by side: raw dramatiq, aioworkflow, dramatiq's pipeline, dramatiq-workflow.

    python bench/run.py [--quick] [--repeats N] [--no-cli] [--only-set local|cli]

One process run, one private redis-server (``--save "" --appendonly no``) for everything, the
database flushed before every measured run. Two worker settings, both with dramatiq's defaults
except worker_timeout = 100 ms (the cap on idle back-off; the default 1 s adds up to a second
of random start latency to a short run): one in-process ``dramatiq.Worker`` with 8 threads,
then 2 dramatiq CLI worker processes (``dramatiq_worker_timeout=100 dramatiq bench.apps.app
-p 1 -t 4``, twice) started and stopped here. Each system has its own actors and queue
(bench/apps/app.py).

Pairing: within a repeat, every row first runs its raw-dramatiq baseline (the 200-step
sequence for chains, 1,000 independent sends otherwise), then each system, in an order
that alternates between repeats. Ratios are computed inside a repeat (same minute, same
machine load) and reported as median and min-max over the repeats. Everything runs once,
untimed, before the first repeat (connections, script loads, imports).

Per row and system:

* wall: from the first submit call to the last task done. Raw and peers: the last task's
  counter hit wakes a threading.Event (in-process) or a BLPOP (CLI: Redis INCR + RPUSH in
  one script). aioworkflow: the same counter, then ``await handle.wait()`` on every handle
  (the workflow's own SUCCEEDED, which comes after the last completion script).
* msg B/task: bytes of the message payloads dramatiq's consumers read from the queues
  (``Message.decode`` is wrapped), per task. Every message is consumed exactly once
  (max_retries=0), so this is exactly the bytes enqueued, including those that
  aioworkflow's Lua scripts write straight into dramatiq's queue hashes.
* net B/task: INFO stats ``total_net_input_bytes`` delta per task: everything every client
  sent to Redis (aioworkflow's stored DAG and templates included), minus the CLI counter.
* RT/task: client-side round trips per task, counted in every process (a command, a
  pipeline or a call on aioworkflow's wire path counts one; CLI workers report theirs to
  another Redis db). dramatiq's empty polls of idle queues are excluded (counted apart).
* EVAL/task: server-side top-level script calls (INFO commandstats evalsha+eval calls),
  minus the CLI counter's and the empty polls'. On Redis 7 ``total_commands_processed`` and
  commandstats also count commands run *inside* scripts (checked at start-up and recorded),
  so they cannot give round trips; ``srv cmds/task`` is kept in the JSON for reference.
* submit: time of the submit call(s) (``await Workflow(c).run()``, ``pipeline.run()``,
  ``dw.Workflow(c).run()``, the sends); stall: the longest lateness of a 1 ms loop-lag
  probe during submit (a blocking submit stalls the loop for all of it).

Writes bench/results/latest.json and latest.png (quick.json/quick.png with ``--quick``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
#: Both sets: consumers of idle queues back off up to this long (dramatiq's default is 1 s, which
#: would add up to a second of random start latency to every short run).
WORKER_TIMEOUT_MS = 100
SYSTEMS = ("raw dramatiq", "aioworkflow", "dramatiq pipeline", "dramatiq-workflow")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start_redis() -> tuple[subprocess.Popen[bytes], int]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not on PATH")
    port = _free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", tempfile.mkdtemp(prefix="aiowf-bench-")],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    return proc, port


# bench/apps/app.py reads its configuration from the environment at import.
_REDIS_PROC, _PORT = _start_redis()
URL = f"redis://127.0.0.1:{_PORT}/0"
os.environ["AIOWF_BENCH_REDIS"] = URL
os.environ["AIOWF_BENCH_STATS"] = f"redis://127.0.0.1:{_PORT}/1"
os.environ["AIOWF_BENCH_COUNT"] = "local"
sys.path.insert(0, str(ROOT))

import dramatiq
import dramatiq_workflow as dw
import redis

import aioworkflow as aw
from aioworkflow import Graph, State, Workflow
from bench.apps import app
from bench.apps.instrument import COUNTERS, uncounted

# -- shapes --------------------------------------------------------------------------------


@dataclass
class Submitted:
    submit_s: float = 0.0
    handles: list[Any] = field(default_factory=list)


Runner = Callable[[], Awaitable[Submitted]]


def aio(canvas_fn: Callable[[], list[Any]]) -> Runner:
    async def run() -> Submitted:
        canvases = canvas_fn()
        t0 = time.perf_counter()
        handles = await asyncio.gather(*(Workflow(c).run() for c in canvases))
        return Submitted(time.perf_counter() - t0, list(handles))

    return run


def dw_run(canvas_fn: Callable[[], list[Any]]) -> Runner:
    async def run() -> Submitted:
        canvases = canvas_fn()
        t0 = time.perf_counter()
        for c in canvases:
            dw.Workflow(c, broker=app.broker).run()
        return Submitted(time.perf_counter() - t0)

    return run


def pipeline(n: int) -> Runner:
    async def run() -> Submitted:
        msgs = [app.pipe_noop.message_with_options(args=(i,), pipe_ignore=True) for i in range(n)]
        pipe = dramatiq.pipeline(msgs)
        t0 = time.perf_counter()
        pipe.run()  # type: ignore[no-untyped-call]
        return Submitted(time.perf_counter() - t0)

    return run


def raw_independent(n: int) -> Runner:
    async def run() -> Submitted:
        t0 = time.perf_counter()
        for i in range(n):
            app.raw_noop.send(i)
        return Submitted(time.perf_counter() - t0)

    return run


def raw_sequence(n: int) -> Runner:
    async def run() -> Submitted:
        t0 = time.perf_counter()
        app.raw_hop.send(0, n)
        return Submitted(time.perf_counter() - t0)

    return run


def readme(lib: Any, t: Any) -> Any:
    """The README workflow: 1; then 2->5, 3, 4->(6, 7) in parallel; then 8."""
    return lib.Chain(
        t.message(1),
        lib.Group(
            lib.Chain(t.message(2), t.message(5)),
            t.message(3),
            lib.Chain(t.message(4), lib.Group(t.message(6), t.message(7))),
        ),
        t.message(8),
    )


def random_dag(n: int, seed: int = 7) -> Graph:
    """``n`` nodes in layers of 100; each node waits for 1-3 random nodes of the layer above."""
    rng = random.Random(seed)
    g = Graph()
    above: list[Any] = []
    for start in range(0, n, 100):
        layer = []
        for i in range(start, min(n, start + 100)):
            after = rng.sample(above, min(len(above), rng.randint(1, 3))) if above else []
            layer.append(g.add(app.aio_noop.message(i), after=after))
        above = layer
    return g


@dataclass
class Row:
    key: str  # short id used in targets and the chart
    name: str
    tasks: int
    systems: dict[str, Runner]
    baseline: tuple[str, int, Runner] | None  # (raw row key, tasks, runner) run first


def make_rows(scale: float) -> list[Row]:
    def s(n: int) -> int:
        return max(2, int(n * scale))

    n_raw, n_chain, n_group, n_copies, n_dag = s(1000), s(200), s(1000), s(200), s(10_000)
    ind = ("raw_ind", n_raw, raw_independent(n_raw))
    seq = ("raw_seq", n_chain, raw_sequence(n_chain))

    def shape(lib: Any, system: str, kind: str) -> list[Any]:
        t = app.NOOPS[system]
        if kind == "chain":
            return [lib.Chain(*[t.message(i) for i in range(n_chain)])]
        if kind == "tgt":
            return [lib.Chain(t.message(0), lib.Group(*[t.message(i) for i in range(n_group)]),
                              t.message(1))]  # fmt: skip
        if kind == "ggt":
            return [lib.Chain(lib.Group(*[t.message(i) for i in range(n_group)]),
                              lib.Group(*[t.message(i) for i in range(n_group)]), t.message(-1))]  # fmt: skip
        return [readme(lib, t) for _ in range(n_copies)]

    def peers(kind: str) -> dict[str, Runner]:
        return {
            "aioworkflow": aio(lambda: shape(aw, "aioworkflow", kind)),
            "dramatiq-workflow": dw_run(lambda: shape(dw, "dramatiq-workflow", kind)),
        }

    return [
        Row("raw_ind", f"raw: {n_raw:,} independent no-ops", n_raw,
            {"raw dramatiq": ind[2]}, None),
        Row("raw_seq", f"raw: {n_chain}-step send-the-next sequence", n_chain,
            {"raw dramatiq": seq[2]}, None),
        Row("chain", f"Chain of {n_chain} no-ops", n_chain,
            {"aioworkflow": aio(lambda: shape(aw, "aioworkflow", "chain")),
             "dramatiq pipeline": pipeline(n_chain),
             "dramatiq-workflow": dw_run(lambda: shape(dw, "dramatiq-workflow", "chain"))}, seq),
        Row("tgt", f"Chain(t, Group({n_group}), t)", n_group + 2, peers("tgt"), ind),
        Row("ggt", f"Chain(Group({n_group}), Group({n_group}), t)", 2 * n_group + 1,
            peers("ggt"), ind),
        Row("readme", f"{n_copies} concurrent README workflows", 8 * n_copies,
            peers("readme"), ind),
        Row("dag", f"{n_dag:,}-node random DAG (Graph)", n_dag,
            {"aioworkflow": aio(lambda: [random_dag(n_dag)])}, ind),
    ]  # fmt: skip


# -- measuring -----------------------------------------------------------------------------


def _resp_len(*args: str) -> int:
    """Bytes of one command in RESP (what the CLI counter script costs on the wire)."""
    return len(f"*{len(args)}\r\n") + sum(len(f"${len(a)}\r\n{a}\r\n") for a in args)


class Harness:
    def __init__(self, mode: str) -> None:
        self.mode = mode  # "local" (in-process worker) or "cli" (worker processes)
        self.client = redis.Redis.from_url(URL)
        self.stats_client = redis.Redis.from_url(os.environ["AIOWF_BENCH_STATS"])
        sha = app._INCR.sha
        keys = (app.COUNTER_KEY, app.TARGET_KEY, app.DONE_KEY)
        self.counter_bytes = _resp_len("EVALSHA", sha, "3", *keys)

    def prepare(self, tasks: int) -> None:
        with uncounted():
            self.client.flushdb()
            self.client.set(app.TARGET_KEY, tasks)
        app.counter.reset(tasks)

    async def finished(self, timeout: float) -> bool:  # noqa: ASYNC109 - a thread's wait
        with uncounted():
            if self.mode == "local":
                return await asyncio.to_thread(app.counter.done.wait, timeout)
            # short blocks: redis-py 8 gives every socket a 5 s read timeout
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if await asyncio.to_thread(self.client.blpop, [app.DONE_KEY], 2) is not None:
                    return True
            return False

    def server(self) -> dict[str, int]:
        with uncounted():
            stats: Any = self.client.info("stats")
            cmds: Any = self.client.info("commandstats")
        scripts = sum(
            int(cmds.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval")
        )
        return {
            "cmds": int(stats["total_commands_processed"]),
            "net_in": int(stats["total_net_input_bytes"]),
            "scripts": scripts,
        }

    def clients(self) -> dict[str, int]:
        mine = COUNTERS.snapshot()
        if self.mode == "cli":
            with uncounted():
                raw = self.stats_client.hgetall(app.STATS_KEY)
            for k, v in raw.items():
                mine[k.decode() if isinstance(k, bytes) else k] += int(v)
        return mine

    async def measure(self, tasks: int, runner: Runner) -> dict[str, Any]:
        self.prepare(tasks)
        srv0, cli0 = self.server(), self.clients()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        worst = [0.0]

        async def probe() -> None:
            while not stop.is_set():
                t = loop.time()
                await asyncio.sleep(0.001)
                worst[0] = max(worst[0], loop.time() - t - 0.001)

        probe_task = asyncio.create_task(probe())
        await asyncio.sleep(0)  # the probe takes its first reading before a blocking submit
        t0 = time.perf_counter()
        sub = await runner()
        stop.set()
        await probe_task
        ok = await self.finished(timeout=900)
        wall = time.perf_counter() - t0
        if not ok:
            raise SystemExit(f"a run of {tasks} tasks did not finish")
        if sub.handles:
            with uncounted():
                finals = await asyncio.gather(*(h.wait(timeout=120) for h in sub.handles))
            wall = time.perf_counter() - t0
            bad = [f for f in finals if f.state is not State.SUCCEEDED]
            if bad:
                raise SystemExit(f"workflow not SUCCEEDED: {bad[0]}")
        # let acks, the last completion scripts and the CLI reporters land (not timed)
        await asyncio.sleep(0.3 if self.mode == "cli" else 0.1)
        srv1, cli1 = self.server(), self.clients()
        d = {k: cli1[k] - cli0[k] for k in cli1}
        s = {k: srv1[k] - srv0[k] for k in srv1}
        own_scripts = tasks if self.mode == "cli" else 0  # the CLI completion counter
        own_bytes = tasks * self.counter_bytes if self.mode == "cli" else 0
        return {
            "wall_s": wall,
            "tasks_per_s": tasks / wall,
            "submit_s": sub.submit_s,
            "loop_stall_ms": worst[0] * 1000,
            "msg_bytes_per_task": d["bytes"] / tasks,
            "messages_per_task": d["msgs"] / tasks,
            "net_bytes_per_task": (s["net_in"] - own_bytes) / tasks,
            "round_trips_per_task": (d["rt"] - d["empty"]) / tasks,
            "empty_polls": d["empty"],
            "evalsha_per_task": (s["scripts"] - own_scripts - d["empty"]) / tasks,
            "srv_cmds_per_task": s["cmds"] / tasks,
        }


METRICS = (
    "wall_s",
    "tasks_per_s",
    "submit_s",
    "loop_stall_ms",
    "msg_bytes_per_task",
    "messages_per_task",
    "net_bytes_per_task",
    "round_trips_per_task",
    "evalsha_per_task",
    "srv_cmds_per_task",
)


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


async def run_set(mode: str, rows: list[Row], warm: list[Row], repeats: int) -> dict[str, Any]:
    harness = Harness(mode)
    for row in warm:  # untimed: connections, script loads, DAG caches, imports
        for runner in row.systems.values():
            await harness.measure(row.tasks, runner)
    raw: dict[str, list[dict[str, Any]]] = {}  # per row key: the raw baseline of each repeat
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {r.key: {} for r in rows}
    for rep in range(repeats):
        for row in rows:
            if row.baseline is not None:
                _, n, runner = row.baseline
                raw.setdefault(row.key, []).append(await harness.measure(n, runner))
            order = list(row.systems.items())
            if rep % 2:
                order.reverse()
            for system, runner in order:
                m = await harness.measure(row.tasks, runner)
                runs[row.key].setdefault(system, []).append(m)
                print(f"  [{mode} {rep + 1}/{repeats}] {row.name:<42} {system:<18} "
                      f"{m['tasks_per_s']:7.0f} tasks/s  {m['wall_s']:6.2f} s", flush=True)  # fmt: skip
            if row.baseline is None:
                raw.setdefault(row.key, []).extend(runs[row.key]["raw dramatiq"][-1:])
    return summarise(rows, runs, raw)


def summarise(rows: list[Row], runs: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for row in rows:
        base = raw[row.key]
        entry: dict[str, Any] = {
            "name": row.name,
            "tasks": row.tasks,
            "baseline": row.baseline[0] if row.baseline else row.key,
            "baseline_tasks_per_s": _spread([b["tasks_per_s"] for b in base]),
            "systems": {},
        }
        for system, mine in runs[row.key].items():
            s: dict[str, Any] = {k: _spread([r[k] for r in mine]) for k in METRICS}
            s["vs_raw"] = _spread([r["tasks_per_s"] / b["tasks_per_s"]
                                   for r, b in zip(mine, base, strict=True)])  # fmt: skip
            s["vs"] = {}
            for peer, theirs in runs[row.key].items():
                if peer == system:
                    continue
                s["vs"][peer] = {
                    "tasks_per_s": _spread([r["tasks_per_s"] / p["tasks_per_s"]
                                            for r, p in zip(mine, theirs, strict=True)]),
                    "msg_bytes_smaller": _spread([p["msg_bytes_per_task"] / r["msg_bytes_per_task"]
                                                  for r, p in zip(mine, theirs, strict=True)]),
                    "net_bytes_smaller": _spread([p["net_bytes_per_task"] / r["net_bytes_per_task"]
                                                  for r, p in zip(mine, theirs, strict=True)]),
                }  # fmt: skip
            s["runs"] = mine
            entry["systems"][system] = s
        out[row.key] = entry
    return out


# -- targets -------------------------------------------------------------------------------


def targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    def sys_(key: str, system: str = "aioworkflow") -> dict[str, Any] | None:
        entry = summary.get(key)
        return None if entry is None else entry["systems"].get(system)

    checks: list[dict[str, Any]] = []

    def add(what: str, value: dict[str, float] | None, goal: float, higher: bool) -> None:
        if value is None:
            return
        ok = value["median"] >= goal if higher else value["median"] <= goal
        checks.append({"target": what, "goal": f"{'>=' if higher else '<='} {goal:g}",
                       **value, "met": ok})  # fmt: skip

    for key in ("tgt", "ggt"):
        a = sys_(key)
        if a is not None:
            name = summary[key]["name"]
            add(f"{name}: aioworkflow / raw dramatiq tasks/s", a["vs_raw"], 0.8, True)
            add(f"{name}: aioworkflow / dramatiq-workflow tasks/s",
                a["vs"].get("dramatiq-workflow", {}).get("tasks_per_s"), 3.0, True)  # fmt: skip
    a = sys_("chain")
    if a is not None:
        add(f"{summary['chain']['name']}: aioworkflow / dramatiq pipeline tasks/s",
            a["vs"].get("dramatiq pipeline", {}).get("tasks_per_s"), 0.9, True)  # fmt: skip
    a = sys_("ggt")
    if a is not None:
        peer = a["vs"].get("dramatiq-workflow", {})
        add(f"{summary['ggt']['name']}: dramatiq-workflow / aioworkflow msg bytes per task",
            peer.get("msg_bytes_smaller"), 100, True)  # fmt: skip
        add(f"{summary['ggt']['name']}: dramatiq-workflow / aioworkflow net bytes per task",
            peer.get("net_bytes_smaller"), 100, True)  # fmt: skip
    for entry in summary.values():
        a = entry["systems"].get("aioworkflow")
        if a is not None:
            add(f"{entry['name']}: aioworkflow round trips per task",
                a["round_trips_per_task"], 3.0, False)  # fmt: skip
    return checks


# -- output --------------------------------------------------------------------------------


def print_table(title: str, summary: dict[str, Any], checks: list[dict[str, Any]]) -> None:
    print(f"\n== {title} ==")
    head = (f"{'shape':<40} {'system':<17} {'tasks/s':>7} {'min-max':>11} {'vs raw':>15} "
            f"{'msg B/t':>8} {'net B/t':>8} {'RT/t':>5} {'EVAL/t':>6} {'submit':>8} "
            f"{'stall':>8}  vs peers (tasks/s ratio, median [min-max])")  # fmt: skip
    print(head)
    print("-" * len(head))
    for entry in summary.values():
        for system, s in entry["systems"].items():
            tps, vr = s["tasks_per_s"], s["vs_raw"]
            peers = ", ".join(
                f"{p} {v['tasks_per_s']['median']:.2f}x "
                f"[{v['tasks_per_s']['min']:.2f}-{v['tasks_per_s']['max']:.2f}]"
                for p, v in s["vs"].items()
            )
            print(f"{entry['name']:<40} {system:<17} {tps['median']:7.0f} "
                  f"{tps['min']:5.0f}-{tps['max']:<5.0f} "
                  f"{vr['median']:4.2f} [{vr['min']:.2f}-{vr['max']:.2f}] "
                  f"{s['msg_bytes_per_task']['median']:8.0f} "
                  f"{s['net_bytes_per_task']['median']:8.0f} "
                  f"{s['round_trips_per_task']['median']:5.2f} "
                  f"{s['evalsha_per_task']['median']:6.2f} "
                  f"{s['submit_s']['median'] * 1000:6.0f}ms "
                  f"{s['loop_stall_ms']['median']:6.1f}ms  {peers}")  # fmt: skip
    print("\ntargets (medians over repeats, [min-max]):")
    for c in checks:
        verdict = "MET   " if c["met"] else "MISSED"
        print(f"  {verdict} {c['target']}: {c['median']:.2f} [{c['min']:.2f}-{c['max']:.2f}] "
              f"(goal {c['goal']})")  # fmt: skip


def chart(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(data["sets"].items())
    fig, axes = plt.subplots(len(sets), 1, figsize=(13, 5 * len(sets)), squeeze=False)
    colors = {"raw dramatiq": "#888888", "aioworkflow": "#1f77b4",
              "dramatiq pipeline": "#2ca02c", "dramatiq-workflow": "#d62728"}  # fmt: skip
    for ax, (title, body) in zip(axes[:, 0], sets, strict=True):
        summary = body["rows"]
        x = 0.0
        ticks, labels = [], []
        for entry in summary.values():
            start = x
            for system in SYSTEMS:
                s = entry["systems"].get(system)
                if s is None:
                    continue
                tps = s["tasks_per_s"]
                ax.bar(x, tps["median"], color=colors[system], width=0.8, label=system,
                       yerr=[[tps["median"] - tps["min"]], [tps["max"] - tps["median"]]],
                       capsize=3)  # fmt: skip
                ax.text(x, tps["median"], f"{tps['median']:.0f}", ha="center", va="bottom",
                        fontsize=7)  # fmt: skip
                x += 1
            ticks.append((start + x - 1) / 2)
            labels.append(entry["name"])
            x += 1
        ax.set_xticks(ticks)
        ax.set_xticklabels(labels, fontsize=7, rotation=12)
        ax.set_ylabel("tasks/s (median, bars: min-max)")
        ax.set_title(f"{title} ({data['repeats']} repeat(s))")
        handles, names = ax.get_legend_handles_labels()
        uniq = dict(zip(names, handles, strict=True))
        ax.legend(uniq.values(), uniq.keys(), fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# -- worker sets ---------------------------------------------------------------------------


def start_cli_workers(processes: int, threads: int) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "AIOWF_BENCH_COUNT": "redis", "PYTHONPATH": str(ROOT),
           "dramatiq_worker_timeout": str(WORKER_TIMEOUT_MS)}  # fmt: skip
    exe = str(Path(sys.executable).with_name("dramatiq"))
    cmd = [exe, "bench.apps.app", "-p", "1", "-t", str(threads)]
    if not Path(exe).exists():
        cmd = [sys.executable, "-m", "dramatiq", *cmd[1:]]
    return [
        subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
        for _ in range(processes)
    ]  # fmt: skip


def stop_cli_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


def check_redis_counting() -> dict[str, Any]:
    """Does INFO's total_commands_processed count commands run inside scripts? (Redis 7: yes)"""
    c = redis.Redis.from_url(URL)
    with uncounted():
        before = int(c.info("stats")["total_commands_processed"])
        c.eval("for i = 1, 10 do redis.call('SET', 'bench:probe:' .. i, i) end return 1", 0)
        after = int(c.info("stats")["total_commands_processed"])
        version = str(c.info("server")["redis_version"])
        c.flushdb()
    delta = after - before - 1  # minus the first INFO itself
    return {
        "redis_version": version,
        "eval_with_10_inner_set_counts": delta,
        "inner_calls_counted": delta > 1,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    scale = 0.2 if args.quick else 1.0
    repeats = args.repeats or (1 if args.quick else 3)
    probe = check_redis_counting()
    print(f"Redis {probe['redis_version']}: one EVAL running 10 SETs adds "
          f"{probe['eval_with_10_inner_set_counts']} to total_commands_processed, so server "
          "counters include calls inside scripts; round trips are counted client-side.")  # fmt: skip
    data: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform(), "dramatiq": dramatiq.__version__,
                    "redis-py": redis.__version__, "redis-server": probe["redis_version"]},
        "quick": args.quick, "scale": scale, "repeats": repeats,
        "redis_counting_check": probe, "method": __doc__, "sets": {},
    }  # fmt: skip
    warm_scale = 0.02
    app.broker.emit_after("process_boot")
    if args.only_set in (None, "local"):
        worker = dramatiq.Worker(app.broker, worker_threads=8, worker_timeout=WORKER_TIMEOUT_MS)
        worker.start()
        try:
            title = "one in-process dramatiq Worker, 8 threads"
            print(f"\n{title}", flush=True)
            rows = make_rows(scale)
            summary = await run_set("local", rows, make_rows(warm_scale), repeats)
            data["sets"][title] = {"rows": summary, "targets": targets(summary)}
        finally:
            worker.stop()
    if args.only_set in (None, "cli"):
        title = "2 dramatiq CLI worker processes (-p 1 -t 4 each)"
        print(f"\n{title}", flush=True)
        procs = start_cli_workers(2, 4)
        try:
            h = Harness("cli")
            h.prepare(8)
            for i in range(8):  # both processes up and consuming
                app.raw_noop.send(i)
            if not await h.finished(timeout=60):
                raise SystemExit("CLI workers did not start")
            rows = make_rows(scale)
            summary = await run_set("cli", rows, make_rows(warm_scale), repeats)
            data["sets"][title] = {"rows": summary, "targets": targets(summary)}
        finally:
            stop_cli_workers(procs)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="shapes at 1/5 size, one repeat")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (1 with --quick)")
    parser.add_argument("--only-set", choices=["local", "cli"], default=None)
    parser.add_argument("--no-cli", action="store_const", const="local", dest="only_set")
    parser.add_argument("--replot", type=Path, help="redraw the PNG next to a results JSON")
    args = parser.parse_args()
    if args.replot:
        _REDIS_PROC.terminate()
        chart(json.loads(args.replot.read_text()), args.replot.with_suffix(".png"))
        return
    t0 = time.perf_counter()
    try:
        data = asyncio.run(main_async(args))
    finally:
        _REDIS_PROC.terminate()
        _REDIS_PROC.wait(10)
    data["elapsed_s"] = time.perf_counter() - t0
    for title, body in data["sets"].items():
        print_table(title, body["rows"], body["targets"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "quick" if args.quick else "latest"
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=1))
    chart(data, RESULTS / f"{name}.png")
    print(f"\nwrote {RESULTS / (name + '.json')} and {name}.png in {data['elapsed_s']:.0f} s")


if __name__ == "__main__":
    main()
