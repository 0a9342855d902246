"""Push-woken consumers (``_dramatiq/_bell.py``): direct-mode scripts ring a per-queue bell.

An idle RedisBroker worker backs off up to its ``worker_timeout`` between fetches; the bell
wakes it as soon as a script pushes a node, without more idle traffic than dramatiq's own.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from aioworkflow import Chain, State, Workflow
from tests.conftest import make_env

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tests.conftest import Env

#: Far longer than any bound below: only a ring can explain a pickup within those bounds.
LONG_TIMEOUT_MS = 8_000


@pytest.fixture
async def redis_env(redis_url: str) -> AsyncIterator[Env]:
    redis.Redis.from_url(redis_url).flushdb()
    e = make_env("redis", redis_url)
    yield e
    # keep ringing while the worker stops: a consumer waiting out a long back-off sees the
    # stop only once it wakes
    client = redis.Redis.from_url(redis_url)
    stopped = threading.Event()

    def ring() -> None:
        while not stopped.wait(0.05):
            for name in e.broker.get_declared_queues():
                client.lpush(f"dramatiq:{name}.bell", "1")
                client.lpush(f"dramatiq:{name}.DQ.bell", "1")

    ringer = threading.Thread(target=ring)
    ringer.start()
    e.close()
    stopped.set()
    ringer.join()
    client.close()
    await e.store.aclose()
    e.store.close()


def long_poll_worker(env: Env, timeout_ms: int = LONG_TIMEOUT_MS) -> dramatiq.Worker:
    w = dramatiq.Worker(env.broker, worker_threads=2, worker_timeout=timeout_ms)
    w.start()
    env.workers.append(w)
    return w


def settle_backoff() -> None:
    # The consumers' back-off doubles from 5 ms on each empty fetch (5, 10, ... 2560 ms). After
    # 3 s the wait in progress started at ~2.56 s and lasts 2.56 s more: a poll alone would not
    # fetch again before ~5.1 s. (A time wait on purpose: nothing to observe while idle.)
    time.sleep(3.0)


async def test_an_idle_worker_wakes_on_the_bell_when_a_node_is_released(redis_env: Env) -> None:
    # Given a worker whose consumers have backed off for seconds (worker_timeout 20 s)
    started = threading.Event()

    def bell_task(label: int) -> None:
        if label == 2:
            started.set()

    task: Any = redis_env.actor(bell_task, actor_name="bell_task")

    long_poll_worker(redis_env)
    settle_backoff()
    # When a two-step workflow starts (start.lua pushes step 1, complete.lua releases step 2)
    t0 = time.monotonic()
    handle = await Workflow(Chain(task.message(1), task.message(2))).run()
    # Then both steps ran well within one back-off: each push rang the bell
    assert started.wait(1.5), "the released node waited for the next poll"
    assert time.monotonic() - t0 < 1.5
    assert (await handle.wait(timeout=5)).state is State.SUCCEEDED


async def test_a_plain_dramatiq_message_is_still_consumed(redis_env: Env) -> None:
    # Given a worker with the doorbell (and a short timeout: plain producers do not ring)
    done = threading.Event()

    def bell_plain() -> None:
        done.set()

    plain: Any = redis_env.actor(bell_plain, actor_name="bell_plain")

    long_poll_worker(redis_env, timeout_ms=100)
    # When a plain dramatiq producer sends a message
    plain.send()
    # Then the worker fetches it at its normal back-off
    assert done.wait(10)


def commands(client: redis.Redis) -> int:
    stats: dict[str, Any] = client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


def idle_commands(broker: dramatiq.Broker, client: redis.Redis, window: float) -> int:
    w = dramatiq.Worker(broker, worker_threads=2)  # default worker_timeout: 1 s
    w.start()
    try:
        time.sleep(2.5)  # the back-off reaches its 1 s ceiling
        before = commands(client)
        time.sleep(window)  # an idle window: nothing to await but time
        return commands(client) - before
    finally:
        w.stop()


def test_idle_workers_send_no_more_commands_than_plain_dramatiq(
    redis_url: str, redis_env: Env
) -> None:
    client = redis.Redis.from_url(redis_url)

    # Given a plain dramatiq worker and a worker with the middleware, on the same queue
    def idle() -> None:  # pragma: no cover - never sent
        pass

    plain = RedisBroker(url=redis_url)  # type: ignore[no-untyped-call]
    for broker in (redis_env.broker, plain):
        dramatiq.actor(broker=broker, actor_name="bell_idle")(idle)
    # When each idles for the same window
    window = 5.0
    theirs = idle_commands(plain, client, window)
    ours = idle_commands(redis_env.broker, client, window)
    # Then ours polls no more (the doorbell's BLPOP included)
    assert ours <= theirs, (ours, theirs)
