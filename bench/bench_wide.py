"""How long one script holds Redis when a workflow releases many nodes at once. Printed figures.

    python bench/bench_wide.py [--width 200000]

A private redis-server (``--save "" --appendonly no``, SLOWLOG threshold 0) per run; the
stores' drivers are called directly (no workers), in direct mode (the scripts push into
dramatiq's queues) and ready mode (the ready set). For each shape, the longest single command
(SLOWLOG: a script call is one EVALSHA) and the wall time of the operation:

* start: ``Group(width)``: submit releases every root (start.lua, in ROOT_CHUNK slices);
* complete: ``Chain(t, Group(width))``: completing t releases the group (complete.lua);
* resume: the same group held by pause, then released by resume.lua;
* piped claim: the step after the group claims with every branch's result (claim.lua).

Target (issue 13): no script over ~50 ms. Releases are not sliced yet: the complete and
resume rows show what one unbounded release costs.
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
from dramatiq.brokers.stub import StubBroker

from aioworkflow import Chain, Group, RedisStore, compile
from aioworkflow._codec import pack
from aioworkflow._dag import spec_nodes
from aioworkflow._dramatiq import queue_keys
from aioworkflow._upload import build_upload, new_message_token
from aioworkflow.errors import StoreUnavailable

broker = StubBroker()


@dramatiq.actor(broker=broker)
def work(i: int) -> None:
    """A task (never run here)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(tmp: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    server = shutil.which("redis-server") or "redis-server"
    proc = subprocess.Popen(
        [server, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", tmp,
         "--slowlog-log-slower-than", "0", "--slowlog-max-len", "100000",
         "--lua-time-limit", "60000"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    return proc, f"redis://127.0.0.1:{port}/0"


def longest_call_us(client: redis.Redis) -> tuple[int, str]:
    """The longest command since the last reset (SLOWLOG), in microseconds, and its name
    (EVALSHA for a script)."""
    best = (0, "-")
    for e in client.slowlog_get(100_000):
        command = e["command"]
        text = command.decode(errors="replace") if isinstance(command, bytes) else str(command)
        name = text.split(" ", 1)[0].upper()
        if name != "SLOWLOG" and int(e["duration"]) > best[0]:
            best = (int(e["duration"]), name)
    return best


def aio(url: str, fn: Any) -> Any:
    """Run ``fn(store.aio())`` on a fresh event loop and store (the async client is bound to
    its loop)."""

    async def go() -> Any:
        store = RedisStore(url=url, retention=600)
        try:
            return await fn(store.aio())
        finally:
            await store.aclose()
            store.close()

    return asyncio.run(go())


async def submit(driver: Any, canvas: Any, direct: bool, wid: str) -> list[str]:
    up = build_upload(wid, compile(canvas), direct=direct, retention_ms=600_000,
                      now_ms=int(time.time() * 1000), token=new_message_token())  # fmt: skip
    qkeys = queue_keys("dramatiq", list(up.slots)) if direct else []
    await driver.submit(wid, up, qkeys)
    return qkeys


def token_of(client: redis.Redis, wid: str) -> str:
    from aioworkflow._keys import keys_of
    from aioworkflow._machine import MetaField

    raw = client.hget(keys_of(wid).meta, str(MetaField.MSG_TOKEN))
    return raw.decode() if isinstance(raw, bytes) else str(raw or "")


def measure(label: str, client: redis.Redis, fn: Any) -> Any:
    """Run ``fn`` and print its wall time and the longest script; a client timeout (a script
    longer than the socket timeout) is printed too, once the script has ended."""
    client.slowlog_reset()
    t0 = time.perf_counter()
    out: Any = None
    error = ""
    try:
        out = fn()
    except (redis.RedisError, StoreUnavailable) as exc:  # the figure is the point: go on
        error = f"   FAILED: {type(exc).__name__}"
    wall = time.perf_counter() - t0
    longest, name = 0, "-"
    while True:  # a script still running answers BUSY (past lua-time-limit) or blocks
        try:
            longest, name = longest_call_us(client)
            break
        except redis.RedisError:  # BUSY, or a read timeout while the script runs on
            time.sleep(0.1)
    print(
        f"  {label:<14} wall {wall * 1000:9.1f} ms   longest call {longest / 1000:8.1f} ms ({name}){error}"
    )
    return out


def run_mode(url: str, width: int, direct: bool) -> None:
    mode = "direct" if direct else "ready"
    print(f"{mode} mode, width {width:,}")
    store = RedisStore(url=url, retention=600)
    client = redis.Redis.from_url(url)
    sync = store.sync
    try:
        group = Group(*(work.message(i) for i in range(width)))
        measure("start", client, lambda: aio(url, lambda d: submit(d, group, direct, f"s{mode}")))
        client.flushdb()

        canvas = Chain(work.message(-1), Group(*(work.message(i) for i in range(width))),
                       work.message(-2), pipe=True)  # fmt: skip
        wid = f"c{mode}"
        qkeys = aio(url, lambda d: submit(d, canvas, direct, wid))
        tok = token_of(client, wid)
        assert sync.claim(wid, 0, "m0", [], tok).run
        done = measure("complete", client, lambda: sync.complete(wid, 0, None, qkeys, None, tok))
        if done is None:
            return
        assert len(done.released) == width, len(done.released)
        aio(url, lambda d: d.control("pause", wid, qkeys))
        for node in range(1, width + 1):
            sync.claim(wid, node, f"h{node}", [], tok)  # held
        resumed = measure(
            "resume", client, lambda: aio(url, lambda d: d.control("resume", wid, qkeys))
        )
        if resumed is None:
            return
        for node in range(1, width + 1):
            sync.claim(wid, node, f"r{node}", [], tok)
            sync.complete(wid, node, pack(node), qkeys, None, tok)
        dag = compile(canvas)
        sink = len(dag) - 1
        wanted = spec_nodes(dag.pipes[sink])
        claim = measure("piped claim", client, lambda: sync.claim(wid, sink, "sink", wanted, tok))
        assert claim.run
        assert len(claim.results) == width
    finally:
        client.flushdb()
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--width", type=int, default=200_000)
    width = parser.parse_args().width
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_redis(tmp)
        try:
            for direct in (True, False):
                run_mode(url, width, direct)
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
