"""Prometheus: the ``aioworkflow_*`` series reach the endpoint of dramatiq's own middleware.

A real ``dramatiq tests.observe_app -p 1 -t 2`` worker process (its exposition server on a free
port and a private database directory, through dramatiq's ``dramatiq_prom_*`` variables) runs a
workflow that succeeds and one that fails; the test then scrapes the endpoint.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import dramatiq
import pytest
from dramatiq.brokers.redis import RedisBroker

from aioworkflow import Chain, Group, RedisStore, State, Workflow, WorkflowMiddleware

if TYPE_CHECKING:
    from collections.abc import Iterator

pytest.importorskip("prometheus_client")
ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def worker(redis_url: str, tmp_path: Path) -> Iterator[int]:
    """A dramatiq CLI worker of tests.observe_app; yields its metrics port."""
    port = _free_port()
    env = {
        **os.environ,
        "AIOWF_OBSERVE_REDIS_URL": redis_url,
        "dramatiq_prom_db": str(tmp_path),
        "dramatiq_prom_host": "127.0.0.1",
        "dramatiq_prom_port": str(port),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.pop("prometheus_multiproc_dir", None)
    cmd = [sys.executable, "-m", "dramatiq", "tests.observe_app", "-p", "1", "-t", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _scrape(port: int, wanted: str, deadline: float) -> str:
    """The endpoint's text once it contains ``wanted`` (a worker may still be booting)."""
    text = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
                text = resp.read().decode()
        except OSError:
            text = ""
        if wanted in text:
            return text
        time.sleep(0.2)  # polling an HTTP endpoint: there is nothing to await
    raise AssertionError(f"{wanted!r} never appeared on the endpoint:\n{text}")


async def test_workflow_metrics_appear_on_dramatiqs_endpoint(worker: int, redis_url: str) -> None:
    # Given a client broker with the app's actor names, and the CLI worker running them
    broker = RedisBroker(url=redis_url)  # type: ignore[no-untyped-call]
    store = RedisStore(url=redis_url)
    broker.add_middleware(WorkflowMiddleware(store))
    dramatiq.set_broker(broker)

    def stub(*args: object) -> None:  # the worker process runs the app's actors
        return None

    ok = dramatiq.actor(actor_name="ok", queue_name="obs", broker=broker)(stub)
    boom = dramatiq.actor(actor_name="boom", queue_name="obs", broker=broker)(stub)
    try:
        # When a workflow succeeds and another fails (each with a callback, which is no node)
        canvas = Chain(ok.message("a"), Group(ok.message("b"), ok.message("c")))
        good = await Workflow(canvas, on_success=ok.message("cb")).run()
        bad = await Workflow(Chain(boom.message()), on_failure=ok.message("cb")).run()
        assert (await good.wait(timeout=60)).state is State.SUCCEEDED
        assert (await bad.wait(timeout=60)).state is State.FAILED
        # (dramatiq counts a message after our completion: wait for the callbacks too)
        text = _scrape(worker, 'dramatiq_messages_total{actor_name="ok",queue_name="obs"} 5.0',
                       time.monotonic() + 60)  # fmt: skip
    finally:
        broker.close()
        await store.aclose()
        store.close()
    # Then the aioworkflow_* series are there, next to dramatiq's own, with their labels
    lines = set(text.splitlines())
    assert 'aioworkflow_workflows_total{state="SUCCEEDED"} 1.0' in lines
    assert 'aioworkflow_workflows_total{state="FAILED"} 1.0' in lines
    assert "aioworkflow_workflows_running 0.0" in lines
    assert (
        'aioworkflow_nodes_total{actor_name="ok",outcome="succeeded",queue_name="obs"} 3.0' in lines
    )
    assert (
        'aioworkflow_nodes_total{actor_name="boom",outcome="failed",queue_name="obs"} 1.0' in lines
    )
    assert (
        'aioworkflow_nodes_total{actor_name="boom",outcome="error",queue_name="obs"} 1.0' in lines
    )
    for name in ("aioworkflow_node_duration_milliseconds", "aioworkflow_node_wait_milliseconds"):
        assert f'{name}_count{{actor_name="ok",queue_name="obs"}} 3.0' in lines, name
        assert f'{name}_count{{actor_name="boom",queue_name="obs"}} 1.0' in lines, name
    assert any(line.startswith("dramatiq_messages_total{") for line in lines)


SCRIPT = """
import sys
for name in ("prometheus_client", "opentelemetry", "opentelemetry.trace"):
    sys.modules[name] = None  # "not installed": any import of them raises ImportError
import asyncio, dramatiq
from dramatiq.brokers.stub import StubBroker
from aioworkflow import Chain, Group, MemoryStore, State, Workflow, WorkflowMiddleware
from aioworkflow._observe import current_traceparent
broker = StubBroker()
broker.add_middleware(WorkflowMiddleware(MemoryStore()))
dramatiq.set_broker(broker)
t = dramatiq.actor(lambda x: x, actor_name="t")
async def main():
    worker = dramatiq.Worker(broker, worker_timeout=50)
    worker.start()
    try:
        handle = await Workflow(Chain(t.message(1), Group(t.message(2), t.message(3)))).run()
        assert (await handle.wait(timeout=30)).state is State.SUCCEEDED
    finally:
        worker.stop()
assert current_traceparent() == ""
asyncio.run(main())
assert "prometheus_client" not in sys.modules or sys.modules["prometheus_client"] is None
print("ok")
"""


def test_workflows_run_with_neither_extra_installed() -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "ok\n"
