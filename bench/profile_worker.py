"""Where an aioworkflow worker spends its time: py-spy on one dramatiq CLI worker process.

    python bench/profile_worker.py [--shape ggt|tgt|chain] [--runs N] [--idle]

Starts a private redis-server and one worker (``dramatiq bench.apps.app -p 1 -t 8``, the
same app as bench/run.py), attaches ``py-spy record --subprocesses -f raw`` to it, submits
``--runs`` workflows of the shape one after another and waits for each, then stops py-spy
and prints the top frames: inclusive (share of samples with the frame anywhere on the
stack) and self (share of samples where it is the innermost frame), and the innermost
frame's package. Without ``--idle`` py-spy drops threads blocked in a system call (waiting
for Redis or for work), so the shares are of CPU time; with ``--idle`` they are of wall time.
Also splits the samples by phase of a task's life (fetch, claim, actor, completion, ack).
Writes the raw collapsed stacks to $TMPDIR/aiowf-profile-<shape>.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Phases of a task, recognised by a frame on the stack (first match wins).
PHASES = (
    ("aioworkflow claim (before_process_message)", "WorkflowMiddleware.before_process_message"),
    ("aioworkflow completion (after_process_message)", "WorkflowMiddleware.after_process_message"),
    ("dramatiq ack (post_process_message)", "post_process_message"),
    ("dramatiq fetch (consumer)", "_RedisConsumer.__next__"),
    ("actor body (the benchmark's completion counter)", "_hit"),
    ("benchmark reporter thread", "Reporter.run"),
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


PORT = _free_port()
_REDIS = subprocess.Popen(
    [shutil.which("redis-server") or "redis-server", "--port", str(PORT), "--bind", "127.0.0.1",
     "--save", "", "--appendonly", "no", "--dir", tempfile.mkdtemp(prefix="aiowf-prof-")],
    stdout=subprocess.DEVNULL,
)  # fmt: skip
_wait_port(PORT)
os.environ["AIOWF_BENCH_REDIS"] = f"redis://127.0.0.1:{PORT}/0"
os.environ["AIOWF_BENCH_STATS"] = f"redis://127.0.0.1:{PORT}/1"
os.environ["AIOWF_BENCH_COUNT"] = "redis"
sys.path.insert(0, str(ROOT))

import redis

import aioworkflow as aw
from aioworkflow import State
from bench.apps import app


def canvas(shape: str, n: int) -> aw.Chain:
    t = app.aio_noop
    if shape == "chain":
        return aw.Chain(*[t.message(i) for i in range(n // 5)])
    if shape == "tgt":
        return aw.Chain(t.message(0), aw.Group(*[t.message(i) for i in range(n)]), t.message(1))
    return aw.Chain(
        aw.Group(*[t.message(i) for i in range(n)]),
        aw.Group(*[t.message(i) for i in range(n)]),
        t.message(-1),
    )


async def workload(shape: str, runs: int) -> float:
    client = redis.Redis(port=PORT)
    done = 0
    t0 = time.perf_counter()
    for _ in range(runs):
        handle = await aw.Workflow(canvas(shape, 1000)).run()
        final = await handle.wait(timeout=300)
        if final.state is not State.SUCCEEDED:
            raise SystemExit(f"workflow ended {final.state}")
        done += final.total
    elapsed = time.perf_counter() - t0
    client.close()
    print(f"{done} tasks in {elapsed:.1f} s: {done / elapsed:.0f} tasks/s (profiled)")
    return elapsed


def report(path: Path, top: int = 18) -> None:
    inclusive: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    package: collections.Counter[str] = collections.Counter()
    phase: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        phase[next((name for name, key in PHASES if key in stack), "other")] += n
        for f in set(frames):
            inclusive[f] += n
        leaf[frames[-1]] += n
        where = frames[-1].rpartition("(")[2]
        for pkg in ("aioworkflow", "dramatiq", "redis", "orjson", "json", "threading", "socket"):
            if f"/{pkg}/" in where or f"{pkg}.py" in where:
                package[pkg] += n
                break
        else:
            package["other"] += n
    if total == 0:
        print("no samples")
        return
    print(f"\n{total} samples; by phase of a task:")
    for name, n in phase.most_common():
        print(f"  {100 * n / total:5.1f}%  {name}")
    print("\ninnermost frame by package:")
    for pkg, n in package.most_common():
        print(f"  {100 * n / total:5.1f}%  {pkg}")
    print("\ninclusive (frame anywhere on the stack):")
    for f, n in inclusive.most_common(top):
        print(f"  {100 * n / total:5.1f}%  {f}")
    print("\nself (innermost frame):")
    for f, n in leaf.most_common(top):
        print(f"  {100 * n / total:5.1f}%  {f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", choices=["ggt", "tgt", "chain"], default="ggt")
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--idle", action="store_true", help="include blocked threads")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "dramatiq_worker_timeout": "100"}
    worker = subprocess.Popen(
        [str(Path(sys.executable).with_name("dramatiq")), "bench.apps.app", "-p", "1", "-t", "8"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    out = Path(tempfile.gettempdir()) / f"aiowf-profile-{args.shape}.txt"
    spy = None
    try:
        time.sleep(2.0)  # the worker process is up and has declared its queues
        spy_cmd = [str(Path(sys.executable).with_name("py-spy")), "record", "--pid",
                   str(worker.pid), "--subprocesses", "-f", "raw", "-r", "200", "-o", str(out),
                   "--nonblocking"]  # fmt: skip
        if args.idle:
            spy_cmd.append("--idle")
        spy = subprocess.Popen(spy_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)
        asyncio.run(workload(args.shape, args.runs))
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            _, err = spy.communicate(timeout=60)
            if spy.returncode not in (0, -signal.SIGINT):
                print(err.decode(errors="replace")[-2000:])
        worker.terminate()
        worker.wait(30)
        _REDIS.terminate()
        _REDIS.wait(10)
    report(out)
    print(f"\nraw stacks: {out}")


if __name__ == "__main__":
    main()
