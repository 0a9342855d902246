"""Broker, stores and no-op actors shared by bench/run.py and its CLI worker processes.

Configured from the environment: ``AIOWF_BENCH_REDIS`` (Redis URL for broker and stores) and
``AIOWF_BENCH_COUNT`` (``local``: tasks count in this process; ``redis``: tasks INCR a Redis
counter and the one that reaches the target pushes to a list the benchmark blocks on).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import dramatiq
import dramatiq_workflow as dw
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.rate_limits.backends import RedisBackend

from aioworkflow import RedisStore, WorkflowMiddleware

URL = os.environ.get("AIOWF_BENCH_REDIS", "redis://127.0.0.1:6379/15")
COUNT = os.environ.get("AIOWF_BENCH_COUNT", "local")
COUNTER_KEY, TARGET_KEY, DONE_KEY = "bench:count", "bench:target", "bench:done"

client = redis.Redis.from_url(URL)
broker = RedisBroker(url=URL)  # type: ignore[no-untyped-call]
store = RedisStore(url=URL)
broker.add_middleware(WorkflowMiddleware(store))
broker.add_middleware(dw.WorkflowMiddleware(RedisBackend(client=redis.Redis.from_url(URL))))
dramatiq.set_broker(broker)


class LocalCounter:
    """Counts finished tasks in this process and signals when the target is reached."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.count = 0
        self.target = 0

    def reset(self, target: int) -> None:
        with self.lock:
            self.count, self.target = 0, target
            self.done.clear()

    def hit(self) -> None:
        with self.lock:
            self.count += 1
            if self.count >= self.target:
                self.done.set()


counter = LocalCounter()
_INCR = client.register_script(
    "local n = redis.call('INCR', KEYS[1]) "
    "if n == tonumber(redis.call('GET', KEYS[2])) then redis.call('RPUSH', KEYS[3], n) end "
    "return n"
)


def _hit() -> None:
    if COUNT == "redis":
        _INCR(keys=[COUNTER_KEY, TARGET_KEY, DONE_KEY])
    else:
        counter.hit()


@dramatiq.actor(max_retries=0)
def noop(*args: Any) -> None:
    """A task that does nothing but count itself."""
    _hit()


@dramatiq.actor(max_retries=0)
def hop(i: int, n: int) -> None:
    """One step of a raw-dramatiq sequence: count, then send the next step."""
    _hit()
    if i + 1 < n:
        hop.send(i + 1, n)
