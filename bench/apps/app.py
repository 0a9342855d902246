"""Broker, store and no-op actors shared by bench/run.py and its dramatiq CLI worker processes.

    dramatiq bench.apps.app -p 1 -t 8      # what bench/run.py starts for the CLI set

Configured from the environment:

* ``AIOWF_BENCH_REDIS``: Redis URL of the broker and of both workflow libraries' state.
* ``AIOWF_BENCH_STATS``: Redis URL (another db, never flushed) where CLI workers report
  their client-side counters (see ``instrument``).
* ``AIOWF_BENCH_COUNT``: ``local`` (tasks count in this process and set a threading.Event)
  or ``redis`` (tasks INCR a Redis counter; the one reaching the target RPUSHes to a list the
  benchmark BLPOPs on).

Each system has its own actors and queue, so a row never sees another system's messages.
Every worker carries both libraries' middleware (they ignore messages that are not theirs).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import dramatiq
import dramatiq_workflow as dw
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.encoder import JSONEncoder
from dramatiq.middleware import AsyncIO
from dramatiq.rate_limits.backends import RedisBackend

from aioworkflow import RedisStore, WorkflowMiddleware
from bench.apps import instrument

URL = os.environ.get("AIOWF_BENCH_REDIS", "redis://127.0.0.1:6379/15")
STATS_URL = os.environ.get("AIOWF_BENCH_STATS", "redis://127.0.0.1:6379/14")
COUNT = os.environ.get("AIOWF_BENCH_COUNT", "local")
COUNTER_KEY, TARGET_KEY, DONE_KEY = "bench:count", "bench:target", "bench:done"
STATS_KEY = "bench:stats"
QUEUES = {
    "raw dramatiq": "bench_raw",
    "aioworkflow": "bench_aio",
    "dramatiq pipeline": "bench_pipe",
    "dramatiq-workflow": "bench_dw",
}

instrument.install()
dramatiq.set_encoder(JSONEncoder())  # plain JSON: aioworkflow's scripts enqueue directly
client = redis.Redis.from_url(URL)
broker = RedisBroker(url=URL)  # type: ignore[no-untyped-call]
broker.add_middleware(AsyncIO())
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
if COUNT == "redis":
    instrument.Reporter(redis.Redis.from_url(STATS_URL), STATS_KEY).start()


def _hit() -> None:
    if COUNT == "redis":
        with instrument.uncounted():
            _INCR(keys=[COUNTER_KEY, TARGET_KEY, DONE_KEY])
    else:
        counter.hit()


@dramatiq.actor(queue_name=QUEUES["raw dramatiq"], max_retries=0)
def raw_noop(*args: Any) -> None:
    """Raw dramatiq: a task that does nothing but count itself."""
    _hit()


@dramatiq.actor(queue_name=QUEUES["raw dramatiq"], max_retries=0)
def raw_hop(i: int, n: int) -> None:
    """One step of a raw-dramatiq sequence: count, then send the next step."""
    _hit()
    if i + 1 < n:
        raw_hop.send(i + 1, n)


@dramatiq.actor(queue_name=QUEUES["aioworkflow"], max_retries=0)
def aio_noop(*args: Any) -> None:
    """aioworkflow's no-op node."""
    _hit()


@dramatiq.actor(queue_name=QUEUES["dramatiq pipeline"], max_retries=0)
def pipe_noop(*args: Any) -> None:
    """A step of dramatiq's own pipeline."""
    _hit()


@dramatiq.actor(queue_name=QUEUES["dramatiq-workflow"], max_retries=0)
def dw_noop(*args: Any) -> None:
    """dramatiq-workflow's no-op task."""
    _hit()


NOOPS = {
    "raw dramatiq": raw_noop,
    "aioworkflow": aio_noop,
    "dramatiq pipeline": pipe_noop,
    "dramatiq-workflow": dw_noop,
}
