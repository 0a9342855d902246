"""The worker app of the SIGKILL test: ``python -m dramatiq tests.chaos.kill_app -p 1 -t 4``.

Imported by a dramatiq CLI worker with ``AIOWF_KILL_REDIS_URL`` set, it builds a RedisBroker
and a RedisStore on that one (private) Redis, so workflows run in direct mode, with a short
heartbeat timeout and frequent queue maintenance: the unacked messages of a SIGKILLed worker
go back to their queue about ``HEARTBEAT_MS`` after its last heartbeat.

Imported by the test process (no env var), it only offers :func:`make_broker` and
:func:`declare`, so that the producer sends messages of the same actors.

Every execution of a leaf is written to the same Redis: ``STARTS`` gets ``[label, start,
process group]`` as the task starts, ``RUNS`` gets ``[label, start, end, process group,
piped]`` when it returns (wall-clock seconds, the clock of Redis stream ids as well). A start
without its run is a task that was killed mid-way.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import dramatiq
import orjson
import redis
from dramatiq.brokers.redis import RedisBroker

from aioworkflow import RedisStore, WorkflowMiddleware

__all__ = ["HEARTBEAT_MS", "RUNS", "STARTS", "declare", "make_broker"]

#: A broker process whose heartbeat is older than this is dead: its unacked messages are
#: requeued by the next maintenance of their queue.
HEARTBEAT_MS = 2500
#: Queue maintenance on a quarter of the broker's commands (dramatiq's default: 0.1 %).
MAINTENANCE_CHANCE = 250_000
QUEUE = "kill"
STARTS = "kill:starts"
RUNS = "kill:runs"
#: Longest simulated work of a task, in seconds: tasks are in flight when a kill hits.
WORK_S = float(os.environ.get("AIOWF_KILL_WORK_S", "0.2"))


def make_broker(url: str) -> tuple[RedisBroker, RedisStore]:
    """A RedisBroker and a RedisStore on ``url``, the broker running workflows."""
    broker = RedisBroker(  # type: ignore[no-untyped-call]
        url=url, heartbeat_timeout=HEARTBEAT_MS, maintenance_chance=MAINTENANCE_CHANCE
    )
    store = RedisStore(url=url)
    broker.add_middleware(WorkflowMiddleware(store, reconcile_interval=1.0, reconcile_age=2.0))
    return broker, store


def declare(broker: dramatiq.Broker, record: redis.Redis | None = None) -> tuple[Any, Any]:
    """The two leaf actors (two queues) on ``broker``; they record into ``record``."""

    def leaf(label: int, *piped: Any) -> int:
        assert record is not None, "a producer-side actor never runs"
        group = os.getpgid(0)
        start = time.time()
        record.rpush(STARTS, orjson.dumps([label, start, group]))
        time.sleep(random.uniform(0, WORK_S))  # the task's own work
        end = time.time()
        record.rpush(RUNS, orjson.dumps([label, start, end, group, list(piped)]))
        return label

    options: dict[str, Any] = {"max_retries": 1_000, "min_backoff": 50, "max_backoff": 500}
    main = dramatiq.actor(broker=broker, actor_name="kill_leaf", queue_name=QUEUE, **options)
    other = dramatiq.actor(
        broker=broker, actor_name="kill_other", queue_name=f"{QUEUE}_other", **options
    )
    return main(leaf), other(leaf)


_URL = os.environ.get("AIOWF_KILL_REDIS_URL")
if _URL:  # a CLI worker
    broker, _store = make_broker(_URL)
    dramatiq.set_broker(broker)
    declare(broker, redis.Redis.from_url(_URL))
