"""Throughput side by side: raw dramatiq, aioworkflow, dramatiq's pipeline, dramatiq-workflow.

    python bench/run.py [--quick] [--repeats N] [--no-cli]

One process run, one private redis-server for everything. Two worker settings: one in-process
dramatiq Worker with 8 threads, then 2 dramatiq CLI worker processes with 4 threads each.
Systems are interleaved within each repeat, so every ratio compares runs made minutes apart
at most; ratios are computed per repeat and reported as median and min-max.

Per row and system: wall time (first submit to last task finished), tasks/s, ratio to raw
dramatiq (the 200-step sequence for chains, 1,000 independent sends otherwise) and to each
peer, bytes enqueued per task, Redis round trips per task (counted at the client: one per
command or pipeline sent, in-process set only) and top-level EVALSHA calls per task (INFO
commandstats), submit time of ``run()`` and the event loop's longest stall during it.
Writes bench/results/latest.json and bench/results/latest.png.
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
    return proc, f"redis://127.0.0.1:{port}/0"


# The app module reads its configuration from the environment at import.
_REDIS_PROC, URL = _start_redis()
os.environ["AIOWF_BENCH_REDIS"] = URL
os.environ["AIOWF_BENCH_COUNT"] = "local"
sys.path.insert(0, str(ROOT))

import dramatiq
import dramatiq_workflow as dw
import redis
import redis.asyncio.connection
import redis.connection
from dramatiq.encoder import JSONEncoder, MessageData

from aioworkflow import Graph, State, Workflow, compile
from aioworkflow._plan import build_upload
from aioworkflow._store import _wire
from bench.apps import app

# -- instruments ---------------------------------------------------------------------------

ROUND_TRIPS = [0]


def _count_sends(cls: Any, name: str) -> None:
    original = getattr(cls, name)

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        ROUND_TRIPS[0] += 1
        return original(self, *args, **kwargs)

    setattr(cls, name, counted)


def _count_async_sends(cls: Any, name: str) -> None:
    original = getattr(cls, name)

    async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        ROUND_TRIPS[0] += 1
        return await original(self, *args, **kwargs)

    setattr(cls, name, counted)


_count_sends(redis.connection.AbstractConnection, "send_packed_command")
_count_async_sends(redis.asyncio.connection.AbstractConnection, "send_packed_command")
_count_sends(_wire._Conn, "call")


class MeasuringEncoder(JSONEncoder):
    """dramatiq's JSON encoder, adding up the bytes of every message it encodes."""

    total = 0

    def encode(self, data: MessageData) -> bytes:
        out = super().encode(data)
        MeasuringEncoder.total += len(out)
        return out


# -- shapes --------------------------------------------------------------------------------


@dataclass
class Submitted:
    submit_s: float = 0.0
    stall_ms: float | None = None
    bytes_per_task: float | None = None
    handles: list[Any] = field(default_factory=list)


Runner = Callable[[], Awaitable[Submitted]]


async def _loop_probe(stop: asyncio.Event, out: list[float]) -> None:
    loop = asyncio.get_running_loop()
    worst = 0.0
    while not stop.is_set():
        t = loop.time()
        await asyncio.sleep(0.001)
        worst = max(worst, loop.time() - t - 0.001)
    out.append(worst)


def _template_bytes(canvas: Any) -> float:
    """Bytes per task that aioworkflow's scripts push into dramatiq's queue (direct mode)."""
    dag = compile(canvas)
    up = build_upload("0" * 32, dag, direct=True, retention_ms=1, now_ms=0)
    sizes = []
    for name, tpl in up.templates.items():
        body = tpl.split(b":", 2)[2]
        rid = f"{'0' * 32}.{name}.{int(name) + 1}"
        sizes.append(len(body) - 6 + 2 * len(rid) + 13)
    return statistics.mean(sizes) if sizes else 0.0


def aio(canvas_fn: Callable[[], list[Any]]) -> Runner:
    async def run() -> Submitted:
        dramatiq.set_encoder(JSONEncoder())
        canvases = canvas_fn()
        stop, stall = asyncio.Event(), list[float]()
        probe = asyncio.create_task(_loop_probe(stop, stall))
        t0 = time.perf_counter()
        handles = await asyncio.gather(*(Workflow(c).run() for c in canvases))
        submit = time.perf_counter() - t0
        stop.set()
        await probe
        return Submitted(submit, stall[0] * 1000, _template_bytes(canvases[0]), list(handles))

    return run


def dw_run(canvas_fn: Callable[[], list[Any]]) -> Runner:
    async def run() -> Submitted:
        dramatiq.set_encoder(MeasuringEncoder())
        MeasuringEncoder.total = 0
        canvases = canvas_fn()
        t0 = time.perf_counter()
        for c in canvases:
            dw.Workflow(c, broker=app.broker).run()
        return Submitted(time.perf_counter() - t0)

    return run


def pipeline(n: int) -> Runner:
    async def run() -> Submitted:
        dramatiq.set_encoder(MeasuringEncoder())
        MeasuringEncoder.total = 0
        pipe = dramatiq.pipeline(
            [app.noop.message_with_options(args=(i,), pipe_ignore=True) for i in range(n)]
        )
        t0 = time.perf_counter()
        pipe.run()  # type: ignore[no-untyped-call]
        return Submitted(time.perf_counter() - t0)

    return run


def raw_independent(n: int) -> Runner:
    async def run() -> Submitted:
        dramatiq.set_encoder(MeasuringEncoder())
        MeasuringEncoder.total = 0
        t0 = time.perf_counter()
        for i in range(n):
            app.noop.send(i)
        return Submitted(time.perf_counter() - t0)

    return run


def raw_sequence(n: int) -> Runner:
    async def run() -> Submitted:
        dramatiq.set_encoder(MeasuringEncoder())
        MeasuringEncoder.total = 0
        t0 = time.perf_counter()
        app.hop.send(0, n)
        return Submitted(time.perf_counter() - t0)

    return run


def readme(lib: Any) -> Any:
    t = app.noop
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
            layer.append(g.add(app.noop.message(i), after=after))
        above = layer
    return g


@dataclass
class Row:
    name: str
    tasks: int
    baseline: str  # row name of the raw run this row is compared with
    systems: dict[str, Runner]


def rows(scale: float) -> list[Row]:
    def s(n: int) -> int:
        return max(2, int(n * scale))

    t = app.noop
    n_raw, n_chain, n_group, n_copies, n_dag = s(1000), s(200), s(1000), s(200), s(10_000)
    raw1, raw2 = (
        f"raw dramatiq: {n_raw:,} independent no-ops",
        f"raw dramatiq: {n_chain}-step sequence",
    )
    chain: list[Any] = [f"Chain of {n_chain} no-ops", n_chain]
    tgt: list[Any] = [f"Chain(t, Group({n_group}), t)", n_group + 2]
    ggt: list[Any] = [f"Chain(Group({n_group}), Group({n_group}), t)", 2 * n_group + 1]
    rdm: list[Any] = [f"{n_copies} concurrent README workflows", 8 * n_copies]
    dag: list[Any] = [f"{n_dag:,}-node random DAG (Graph)", n_dag]

    def both(lib: Any, shape: str) -> list[Any]:
        if shape == "tgt":
            return [lib.Chain(t.message(0), lib.Group(*[t.message(i) for i in range(n_group)]),
                              t.message(1))]  # fmt: skip
        if shape == "ggt":
            return [lib.Chain(lib.Group(*[t.message(i) for i in range(n_group)]),
                              lib.Group(*[t.message(i) for i in range(n_group)]), t.message(-1))]  # fmt: skip
        if shape == "chain":
            return [lib.Chain(*[t.message(i) for i in range(n_chain)])]
        return [readme(lib) for _ in range(n_copies)]

    import aioworkflow as aw

    return [
        Row(raw1, n_raw, raw1, {"raw dramatiq": raw_independent(n_raw)}),
        Row(raw2, n_chain, raw2, {"raw dramatiq": raw_sequence(n_chain)}),
        Row(
            str(chain[0]),
            n_chain,
            raw2,
            {
                "aioworkflow": aio(lambda: both(aw, "chain")),
                "dramatiq pipeline": pipeline(n_chain),
                "dramatiq-workflow": dw_run(lambda: both(dw, "chain")),
            },
        ),
        Row(
            str(tgt[0]),
            int(tgt[1]),
            raw1,
            {
                "aioworkflow": aio(lambda: both(aw, "tgt")),
                "dramatiq-workflow": dw_run(lambda: both(dw, "tgt")),
            },
        ),
        Row(
            str(ggt[0]),
            int(ggt[1]),
            raw1,
            {
                "aioworkflow": aio(lambda: both(aw, "ggt")),
                "dramatiq-workflow": dw_run(lambda: both(dw, "ggt")),
            },
        ),
        Row(
            str(rdm[0]),
            int(rdm[1]),
            raw1,
            {
                "aioworkflow": aio(lambda: both(aw, "readme")),
                "dramatiq-workflow": dw_run(lambda: both(dw, "readme")),
            },
        ),
        Row(str(dag[0]), int(dag[1]), raw1, {"aioworkflow": aio(lambda: [random_dag(n_dag)])}),
    ]


# -- running -------------------------------------------------------------------------------


class Harness:
    def __init__(self, mode: str) -> None:
        self.mode = mode  # "local" (in-process worker) or "redis" (CLI workers count in Redis)
        self.client = redis.Redis.from_url(URL)

    def prepare(self, tasks: int) -> None:
        self.client.flushdb()
        self.client.set(app.TARGET_KEY, tasks)
        app.counter.reset(tasks)

    async def finished(self, timeout: float) -> bool:  # noqa: ASYNC109 - thread wait
        if self.mode == "local":
            return await asyncio.to_thread(app.counter.done.wait, timeout)
        got = await asyncio.to_thread(self.client.blpop, [app.DONE_KEY], int(timeout))
        return got is not None

    def stats(self) -> tuple[int, int]:
        info: Any = self.client.info("commandstats")
        evalsha = int(info.get("cmdstat_evalsha", {}).get("calls", 0))
        return evalsha, ROUND_TRIPS[0]

    async def measure(self, row: Row, system: str, runner: Runner) -> dict[str, Any]:
        self.prepare(row.tasks)
        ev0, rt0 = self.stats()
        t0 = time.perf_counter()
        sub = await runner()
        ok = await self.finished(timeout=600)
        wall = time.perf_counter() - t0
        ev1, rt1 = self.stats()
        if not ok:
            raise SystemExit(f"{system} on {row.name!r} did not finish")
        for h in sub.handles:  # correctness, outside the timing
            assert (await h.wait(timeout=60)).state is State.SUCCEEDED
        nbytes = sub.bytes_per_task
        if nbytes is None:
            nbytes = MeasuringEncoder.total / row.tasks
        # minus the measurement's own INFO; in the CLI set each task also runs the counter script
        rt_per_task = (rt1 - rt0 - 1) / row.tasks if self.mode == "local" else None
        own_evalsha = 1 if self.mode == "redis" else 0
        return {
            "wall_s": wall,
            "tasks_per_s": row.tasks / wall,
            "submit_s": sub.submit_s,
            "loop_stall_ms": sub.stall_ms,
            "bytes_per_task": nbytes,
            "round_trips_per_task": rt_per_task,
            "evalsha_per_task": (ev1 - ev0) / row.tasks - own_evalsha,
        }


async def run_set(mode: str, all_rows: list[Row], repeats: int) -> dict[str, Any]:
    harness = Harness(mode)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {r.name: {} for r in all_rows}
    for rep in range(repeats):
        for row in all_rows:
            for system, runner in row.systems.items():
                m = await harness.measure(row, system, runner)
                results[row.name].setdefault(system, []).append(m)
                print(f"  [{mode} {rep + 1}/{repeats}] {row.name:<44} {system:<18} "
                      f"{m['tasks_per_s']:8.0f} tasks/s", flush=True)  # fmt: skip
    return summarise(all_rows, results)


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(all_rows: list[Row], results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for row in all_rows:
        base = results[row.baseline]["raw dramatiq"]
        entry: dict[str, Any] = {"tasks": row.tasks, "baseline": row.baseline, "systems": {}}
        for system, runs in results[row.name].items():
            s: dict[str, Any] = {
                key: _spread([r[key] for r in runs])
                for key in ("wall_s", "tasks_per_s", "submit_s", "bytes_per_task")
            }
            for key in ("loop_stall_ms", "round_trips_per_task", "evalsha_per_task"):
                vals = [r[key] for r in runs if r[key] is not None]
                s[key] = _spread(vals) if vals else None
            s["vs_raw"] = _spread([r["tasks_per_s"] / b["tasks_per_s"]
                                   for r, b in zip(runs, base, strict=True)])  # fmt: skip
            for peer, peer_runs in results[row.name].items():
                if peer != system:
                    s[f"vs {peer}"] = _spread([r["tasks_per_s"] / p["tasks_per_s"]
                                               for r, p in zip(runs, peer_runs, strict=True)])  # fmt: skip
                    s[f"bytes vs {peer}"] = statistics.median(
                        [p["bytes_per_task"] for p in peer_runs]
                    ) / max(1e-9, statistics.median([r["bytes_per_task"] for r in runs]))
            entry["systems"][system] = s
        out[row.name] = entry
    return out


def print_table(title: str, summary: dict[str, Any]) -> None:
    print(f"\n== {title} ==")
    head = (f"{'shape':<44} {'system':<18} {'tasks/s':>8} {'spread':>13} {'vs raw':>6} "
            f"{'B/task':>9} {'RT/task':>7} {'EVALSHA':>7} {'submit':>8} {'stall':>7}  vs peers")  # fmt: skip
    print(head)
    print("-" * len(head))
    for name, entry in summary.items():
        for system, s in entry["systems"].items():
            tps = s["tasks_per_s"]
            rt = s["round_trips_per_task"]
            stall = s["loop_stall_ms"]
            peers = ", ".join(f"{k[3:]} {v['median']:.2f}x" for k, v in s.items()
                              if k.startswith("vs ") and isinstance(v, dict))  # fmt: skip
            print(f"{name:<44} {system:<18} {tps['median']:8.0f} "
                  f"{tps['min']:6.0f}-{tps['max']:<6.0f} {s['vs_raw']['median']:6.2f} "
                  f"{s['bytes_per_task']['median']:9.0f} "
                  f"{rt['median'] if rt else float('nan'):7.2f} "
                  f"{s['evalsha_per_task']['median']:7.2f} "
                  f"{s['submit_s']['median'] * 1000:6.0f}ms "
                  f"{(stall['median'] if stall else float('nan')):5.1f}ms  {peers}")  # fmt: skip


def chart(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(data["sets"].items())
    fig, axes = plt.subplots(len(sets), 1, figsize=(12, 5 * len(sets)), squeeze=False)
    colors = {"raw dramatiq": "#888888", "aioworkflow": "#1f77b4",
              "dramatiq pipeline": "#2ca02c", "dramatiq-workflow": "#d62728"}  # fmt: skip
    for ax, (title, summary) in zip(axes[:, 0], sets, strict=True):
        labels, x = list(summary), 0.0
        ticks = []
        for name in labels:
            systems = summary[name]["systems"]
            start = x
            for system, s in systems.items():
                tps = s["tasks_per_s"]
                ax.bar(x, tps["median"], color=colors.get(system, "#999999"), width=0.8,
                       yerr=[[tps["median"] - tps["min"]], [tps["max"] - tps["median"]]],
                       label=system)  # fmt: skip
                x += 1
            ticks.append((start + x - 1) / 2)
            x += 1
        ax.set_xticks(ticks)
        ax.set_xticklabels([n.replace(": ", ":\n") for n in labels], fontsize=7, rotation=15)
        ax.set_ylabel("tasks/s (median, min-max)")
        ax.set_title(title)
        handles, names = ax.get_legend_handles_labels()
        uniq = dict(zip(names, handles, strict=True))
        ax.legend(uniq.values(), uniq.keys(), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def start_cli_workers(processes: int, threads: int) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "AIOWF_BENCH_COUNT": "redis", "PYTHONPATH": str(ROOT)}
    return [
        subprocess.Popen(
            [sys.executable, "-m", "dramatiq", "bench.apps.app", "-p", "1", "-t", str(threads)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(processes)
    ]


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    scale = 0.2 if args.quick else 1.0
    repeats = args.repeats or (1 if args.quick else 3)
    all_rows = rows(scale)
    data: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "dramatiq": dramatiq.__version__, "redis-py": redis.__version__},
        "quick": args.quick, "repeats": repeats, "sets": {},
    }  # fmt: skip
    app.broker.emit_after("process_boot")
    worker = dramatiq.Worker(app.broker, worker_threads=8, worker_timeout=100)
    worker.start()
    try:
        title = "one in-process Worker, 8 threads"
        print(f"\n{title}", flush=True)
        data["sets"][title] = await run_set("local", all_rows, repeats)
    finally:
        worker.stop()
    if not args.no_cli:
        title = "2 dramatiq CLI worker processes, 4 threads each"
        print(f"\n{title}", flush=True)
        procs = start_cli_workers(2, 4)
        try:
            h = Harness("redis")
            h.prepare(4)
            for i in range(4):  # warm-up: both processes are consuming
                app.noop.send(i)
            if not await h.finished(timeout=60):
                raise SystemExit("CLI workers did not start")
            data["sets"][title] = await run_set("redis", rows(scale), repeats)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(30)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small shapes, one repeat")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--no-cli", action="store_true", help="skip the CLI worker set")
    args = parser.parse_args()
    try:
        data = asyncio.run(main_async(args))
    finally:
        _REDIS_PROC.terminate()
        _REDIS_PROC.wait(10)
    for title, summary in data["sets"].items():
        print_table(title, summary)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "quick" if args.quick else "latest"
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=1))
    chart(data, RESULTS / f"{name}.png")
    print(f"\nwrote {RESULTS / (name + '.json')} and {name}.png")


if __name__ == "__main__":
    main()
