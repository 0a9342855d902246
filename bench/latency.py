"""Start latency and chain step rate: aioworkflow vs raw dramatiq, on RedisBroker and RabbitMQ.

    python bench/latency.py [--runs 20] [--brokers redis,rabbitmq] [--timeouts default,100]
                            [--chain 100]

The quick-start setup: dramatiq's broker + ``RedisStore`` + ``WorkflowMiddleware``, and
dramatiq's ``Results`` middleware (Redis backend) for the raw baselines. A private
redis-server (``--save "" --appendonly no``); RabbitMQ at ``AIOWF_LAT_RABBITMQ`` (default
``amqp://guest:guest@127.0.0.1:5672/hL1``). For each broker and worker_timeout (dramatiq's
default 1 s, and 100 ms), 2 dramatiq CLI worker processes ``-p 1 -t 8`` run this module as
their app. Cases:

* idle start: after a pause long enough for every consumer to back off fully (2.5x the
  worker_timeout), the time from the send to the result: raw dramatiq (``send`` + ``Results``
  blocking get), a 1-node workflow (``run`` + ``wait``), dramatiq's ``pipeline`` of 5 and a
  ``Chain`` of 5. The cases are interleaved, ``--runs`` runs each; p50 and p99.
* busy chain: a ``Chain`` of ``--chain`` no-ops vs a ``pipeline`` of as many, steps/s.

Client-side cases (many pending waits, many concurrent workflows) live in
``bench/latency_client.py`` (``client_cases``), run here when that file exists.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dramatiq
import redis
from dramatiq.middleware import AsyncIO
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from aioworkflow import Chain, RedisStore, Workflow, WorkflowMiddleware

ROOT = Path(__file__).resolve().parent.parent
BROKER = os.environ.get("AIOWF_LAT_BROKER", "redis")
URL = os.environ.get("AIOWF_LAT_REDIS", "redis://127.0.0.1:6379/15")
RABBITMQ = os.environ.get("AIOWF_LAT_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672/hL1")


def _broker() -> dramatiq.Broker:
    if BROKER == "rabbitmq":
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url=RABBITMQ)
    from dramatiq.brokers.redis import RedisBroker

    return RedisBroker(url=URL)  # type: ignore[no-untyped-call]


broker = _broker()
broker.add_middleware(AsyncIO())
broker.add_middleware(Results(backend=RedisBackend(client=redis.Redis.from_url(URL))))  # type: ignore[no-untyped-call]
store = RedisStore(url=URL)
broker.add_middleware(WorkflowMiddleware(store))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="lat_raw", store_results=True, max_retries=0)
def raw(*args: Any) -> int:
    """A no-op whose result dramatiq stores (the raw baseline and pipeline steps)."""
    return 0


@dramatiq.actor(queue_name="lat_wf", max_retries=0)
def step(*args: Any) -> None:
    """A no-op workflow node."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_redis() -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not on PATH")
    port = _free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", tempfile.mkdtemp(prefix="aiowf-lat-")],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(200):
        with contextlib.suppress(redis.ConnectionError):
            client.ping()
            return proc, url
        time.sleep(0.02)
    raise SystemExit("redis-server did not start")


def _start_workers(name: str, url: str, timeout_ms: int | None) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "AIOWF_LAT_BROKER": name, "AIOWF_LAT_REDIS": url,
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    if timeout_ms is not None:
        env["dramatiq_worker_timeout"] = str(timeout_ms)
    exe = str(Path(sys.executable).with_name("dramatiq"))
    cmd = [exe, "bench.latency", "-p", "1", "-t", "8"]
    return [
        subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
        for _ in range(2)
    ]  # fmt: skip


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


async def _raw_once() -> None:
    msg = raw.send()
    await asyncio.to_thread(msg.get_result, block=True, timeout=30_000)


async def _pipe_once(n: int) -> None:
    pipe = dramatiq.pipeline(raw.message() for _ in range(n))
    pipe.run()  # type: ignore[no-untyped-call]
    await asyncio.to_thread(pipe.get_result, block=True, timeout=120_000)


async def _wf_once(n: int) -> None:
    canvas = step.message() if n == 1 else Chain(*(step.message() for _ in range(n)))
    handle = await Workflow(canvas).run()
    await handle.wait(timeout=120)


async def _timed(fn: Any, *args: Any) -> float:
    t0 = time.perf_counter()
    await fn(*args)
    return (time.perf_counter() - t0) * 1000


async def idle_cases(runs: int, pause: float) -> dict[str, dict[str, float]]:
    """p50/p99 (ms) of each idle-start case, interleaved, each after a full back-off."""
    cases = {
        "raw send+result": (_raw_once,),
        "workflow 1 node": (_wf_once, 1),
        "pipeline 5": (_pipe_once, 5),
        "Chain 5": (_wf_once, 5),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(runs):
        for name, (fn, *args) in cases.items():
            await asyncio.sleep(pause)
            times[name].append(await _timed(fn, *args))
    return {
        k: {"p50": statistics.median(v), "p99": _pct(v, 0.99), "min": min(v), "max": max(v)}
        for k, v in times.items()
    }


async def busy_chain(n: int) -> dict[str, float]:
    """Steps/s of a Chain of n no-ops and of a pipeline of n."""
    wf = await _timed(_wf_once, n)
    pipe = await _timed(_pipe_once, n)
    return {"Chain steps/s": n / wf * 1000, "pipeline steps/s": n / pipe * 1000}


async def _measure(runs: int, timeout_ms: int, chain: int) -> dict[str, Any]:
    # warm up: workers booted, scripts loaded, connections open
    for _ in range(3):
        await _raw_once()
        await _wf_once(2)
    out: dict[str, Any] = {"idle": await idle_cases(runs, 2.5 * timeout_ms / 1000)}
    out["busy"] = await busy_chain(chain)
    return out


def _report(label: str, res: dict[str, Any]) -> None:
    idle = res["idle"]
    print(f"\n== {label}")
    for k, v in idle.items():
        print(f"  idle {k:18s} p50 {v['p50']:7.1f} ms  p99 {v['p99']:7.1f} ms  "
              f"(min {v['min']:.1f}, max {v['max']:.1f})")  # fmt: skip
    r1 = idle["workflow 1 node"]["p50"] / idle["raw send+result"]["p50"]
    r5 = idle["Chain 5"]["p50"] / idle["pipeline 5"]["p50"]
    print(f"  median ratio 1-node/raw {r1:.2f}, Chain 5/pipeline 5 {r5:.2f} (target <= 0.2)")
    b = res["busy"]
    print(f"  busy Chain {b['Chain steps/s']:.0f} steps/s vs pipeline "
          f"{b['pipeline steps/s']:.0f}: {b['Chain steps/s'] / b['pipeline steps/s']:.2f}x "
          "(target >= 3x)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--brokers", default="redis,rabbitmq")
    ap.add_argument("--timeouts", default="default,100")
    ap.add_argument("--chain", type=int, default=100)
    args = ap.parse_args()
    proc, url = _start_redis()
    results: dict[str, Any] = {}
    try:
        for name in args.brokers.split(","):
            for t in args.timeouts.split(","):
                timeout_ms = None if t == "default" else int(t)
                label = f"{name}, worker_timeout={t}"
                redis.Redis.from_url(url).flushdb()
                env = {"AIOWF_LAT_BROKER": name, "AIOWF_LAT_REDIS": url}
                workers = _start_workers(name, url, timeout_ms)
                try:
                    # the producer side runs in a child too: one broker/store per setting
                    out = subprocess.run(
                        [sys.executable, "-m", "bench.latency", "--child", str(args.runs),
                         str(timeout_ms or 1000), str(args.chain)],
                        cwd=ROOT, env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
                        capture_output=True, text=True, check=True, timeout=3600,
                    )  # fmt: skip
                finally:
                    _stop(workers)
                results[label] = json.loads(out.stdout.strip().splitlines()[-1])
                _report(label, results[label])
        try:
            from bench.latency_client import client_cases
        except ImportError:
            print("\nbench/latency_client.py is missing: client-side cases not run")
        else:
            print("\n== client cases", asyncio.run(client_cases(url)))
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        runs, timeout_ms, chain = map(int, sys.argv[2:5])
        print(json.dumps(asyncio.run(_measure(runs, timeout_ms, chain))))
    else:
        main()
