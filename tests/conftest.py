"""Shared fixtures: a private redis-server per session, and dramatiq environments.

Tests talk to real services: a redis-server started here on a free port (or the server named by
``AIOWORKFLOW_TEST_REDIS_URL``), and RabbitMQ on 127.0.0.1:5672 for the ready-mode broker.
If a service is missing the tests fail and say how to start it; a skipped test would hide a
broken install.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import dramatiq
import hypothesis  # noqa: F401 - imported up front: its pytest plugin would import it at exit
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AsyncIO

from aioworkflow import MemoryStore, RedisStore, WorkflowMiddleware

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

    from dramatiq.brokers.rabbitmq import RabbitmqBroker


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServer:
    """A redis-server process started by a test fixture."""

    port: int
    proc: subprocess.Popen[bytes] | None
    workdir: str

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def start_redis(*extra: str, port: int | None = None, workdir: str | None = None) -> RedisServer:
    """Start a private redis-server and wait until it answers PING."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not on PATH: install it (apt-get install redis-server)")
    port = port or free_port()
    workdir = workdir or tempfile.mkdtemp(prefix="aiowf-redis-")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir, *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail(f"redis-server on port {port} did not start")
            time.sleep(0.02)
    client.close()
    return RedisServer(port, proc, workdir)


@pytest.fixture
def servers() -> Iterator[list[RedisServer]]:
    """Private redis-servers a test starts; each is killed at teardown, whatever happened."""
    started: list[RedisServer] = []
    yield started
    for server in started:
        if server.proc is not None and server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(10)


async def poll_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll ``condition`` (in a thread: it may block) until true; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not await anyio.to_thread.run_sync(condition):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a Redis for this test session (private server unless the env var names one)."""
    url = os.environ.get("AIOWORKFLOW_TEST_REDIS_URL")
    if url:
        try:
            redis.Redis.from_url(url).ping()
        except redis.ConnectionError:
            pytest.fail(f"AIOWORKFLOW_TEST_REDIS_URL={url} is not reachable: start Redis there")
        yield url
        return
    server = start_redis()
    yield server.url
    server.stop()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A sync client on a flushed database."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


RABBITMQ_URL = os.environ.get("AIOWORKFLOW_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")


@dataclass
class Recorder:
    """Thread-safe log of task executions: (label, start, end) with monotonic times."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    runs: list[tuple[Any, float, float]] = field(default_factory=list)
    starts: list[tuple[Any, float]] = field(default_factory=list)

    def start(self, label: Any) -> float:
        now = time.monotonic()
        with self.lock:
            self.starts.append((label, now))
        return now

    def finish(self, label: Any, started: float) -> None:
        with self.lock:
            self.runs.append((label, started, time.monotonic()))

    def labels(self) -> list[Any]:
        with self.lock:
            return [r[0] for r in self.runs]


@dataclass
class Env:
    """A broker + store + middleware, with actors declared on that broker."""

    name: str
    broker: dramatiq.Broker
    store: Any
    middleware: WorkflowMiddleware
    rec: Recorder = field(default_factory=Recorder)
    workers: list[dramatiq.Worker] = field(default_factory=list)

    def actor(self, fn: Callable[..., Any] | None = None, **options: Any) -> Any:
        """Declare an actor on this env's broker (unique name per env)."""

        def wrap(f: Callable[..., Any]) -> Any:
            return dramatiq.actor(broker=self.broker, **options)(f)

        return wrap(fn) if fn is not None else wrap

    def worker(self, threads: int = 8) -> dramatiq.Worker:
        """Start an in-process worker (stopped at teardown)."""
        w = dramatiq.Worker(self.broker, worker_threads=threads, worker_timeout=50)
        w.start()
        self.workers.append(w)
        return w

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        self.broker.close()


def rabbitmq_broker() -> RabbitmqBroker:
    """A RabbitmqBroker on ``RABBITMQ_URL``, connected now: a missing server fails the test."""
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    try:
        broker = RabbitmqBroker(url=RABBITMQ_URL)
        broker.connection  # noqa: B018 - connects now, so a missing server fails here
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        pytest.fail(f"RabbitMQ is not reachable at {RABBITMQ_URL} ({exc}); start it with "
                    "'rabbitmq-server -detached'")  # fmt: skip
    return broker


def make_env(name: str, redis_url: str, **mw: Any) -> Env:
    """Build one of the environments: memory (StubBroker), redis (direct), rabbitmq (ready)."""
    if name == "memory":
        broker: dramatiq.Broker = StubBroker()
        store: Any = MemoryStore()
    elif name == "redis":
        broker = RedisBroker(url=redis_url)  # type: ignore[no-untyped-call]
        store = RedisStore(url=redis_url)
    elif name == "rabbitmq":
        broker = rabbitmq_broker()
        store = RedisStore(url=redis_url)
    else:  # pragma: no cover
        raise ValueError(name)
    broker.add_middleware(AsyncIO())
    middleware = WorkflowMiddleware(store, **mw)
    broker.add_middleware(middleware)
    dramatiq.set_broker(broker)
    return Env(name, broker, store, middleware)


@pytest.fixture(params=["memory", "redis", "rabbitmq"])
async def env(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Env]:
    """Each end-to-end test runs on StubBroker+MemoryStore, RedisBroker+RedisStore (direct
    enqueue) and RabbitmqBroker+RedisStore (ready set + reconciler)."""
    redis.Redis.from_url(redis_url).flushdb()
    e = make_env(request.param, redis_url)
    if request.param == "rabbitmq":
        e.broker.flush_all()
    yield e
    if request.param == "rabbitmq":
        e.broker.flush_all()
    e.close()
    await e.store.aclose()
    e.store.close()
