"""Environments for the dramatiq-workflow compat layer: StubBroker and RedisBroker."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.rate_limits.backends import RedisBackend, StubBackend

from aioworkflow._client import _portal_call  # pyright: ignore[reportPrivateUsage]
from aioworkflow.compat.dramatiq_workflow import WorkflowMiddleware

if TYPE_CHECKING:
    from collections.abc import Iterator


@dataclass
class CompatEnv:
    """A broker with the compat middleware, a run log and in-process workers."""

    name: str
    broker: dramatiq.Broker
    backend: Any
    redis_url: str
    middleware: WorkflowMiddleware | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    ran: list[Any] = field(default_factory=list)
    workers: list[dramatiq.Worker] = field(default_factory=list)

    def install(self) -> WorkflowMiddleware:
        self.middleware = WorkflowMiddleware(self.backend)
        self.broker.add_middleware(self.middleware)
        return self.middleware

    def task(self, name: str = "task") -> Any:
        """An actor recording its first argument."""

        def record(label: Any, *rest: Any) -> None:
            with self.lock:
                self.ran.append(label)

        return dramatiq.actor(actor_name=f"{name}_{self.name}", broker=self.broker)(record)

    def labels(self) -> list[Any]:
        with self.lock:
            return list(self.ran)

    def worker(self) -> dramatiq.Worker:
        w = dramatiq.Worker(self.broker, worker_threads=4, worker_timeout=50)
        w.start()
        self.workers.append(w)
        return w

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        self.broker.close()
        if self.middleware is not None:
            # run() and the sync handles use the background loop of the sync twin
            _portal_call(self.middleware.store.aclose)
            self.middleware.store.close()


def make_backend(name: str, redis_url: str) -> Any:
    if name == "stub":
        return StubBackend()  # type: ignore[no-untyped-call]
    return RedisBackend(client=redis.Redis.from_url(redis_url))


@pytest.fixture(params=["stub", "redis"])
def compat_env(request: pytest.FixtureRequest, redis_url: str) -> Iterator[CompatEnv]:
    """StubBroker + StubBackend, and RedisBroker + RedisBackend on the test Redis."""
    redis.Redis.from_url(redis_url).flushdb()
    broker: dramatiq.Broker = (
        StubBroker() if request.param == "stub" else RedisBroker(url=redis_url)  # type: ignore[no-untyped-call]
    )
    dramatiq.set_broker(broker)
    env = CompatEnv(request.param, broker, make_backend(request.param, redis_url), redis_url)
    yield env
    env.close()
