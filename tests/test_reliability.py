"""Bad input and long runs, end to end (memory, redis, rabbitmq: the ``env`` fixture).

- A delivery whose workflow no longer exists (never stored, expired, deleted mid-run) is
  skipped with a warning and acked: never run, never retried, and the worker goes on.
- A result over the store's limit fails its node with ``ResultTooLarge`` (the user's fix is in
  the actor), fires ``on_failure`` once and runs nothing after it.
- A node retrying with back-off for longer than the retention period keeps its workflow alive:
  no key has a TTL while the workflow runs, the successor runs only after the retried node
  succeeds, and the keys expire one retention period after the end.

The decoders' fuzzing lives with the decoders (``test_codec.py``, ``test_encoder.py``,
``test_compiler.py``), as does a worker going on after a garbage message (``test_encoder.py``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import dramatiq
import pytest

from aioworkflow import Chain, Group, MemoryStore, State, Workflow, WorkflowMiddleware
from aioworkflow._keys import workflow_keys
from aioworkflow._plan import OPTION
from aioworkflow.errors import WorkflowFailed, WorkflowNotFound
from tests.test_control import drain
from tests.test_runtime import check_order, declare_task, wait_for

if TYPE_CHECKING:
    import redis
    from dramatiq.broker import MessageProxy

    from aioworkflow import WorkflowHandle
    from tests.conftest import Env


class Deliveries(dramatiq.Middleware):
    """Counts every delivery by message id (placed before WorkflowMiddleware, so it sees the
    deliveries that the workflow middleware then skips)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count: Counter[str] = Counter()

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        with self.lock:
            self.count[message.message_id] += 1


def count_deliveries(env: Env) -> Deliveries:
    d = Deliveries()
    env.broker.add_middleware(d, before=WorkflowMiddleware)
    return d


def delete_workflow(env: Env, handle: WorkflowHandle) -> None:
    """What expiry (or an operator's DEL) does to a workflow: every key of it is gone."""
    if isinstance(env.store, MemoryStore):
        with env.store._lock:
            del env.store._wfs[handle.id]
    else:
        env.store.client.delete(*workflow_keys(handle.id))


def not_found_warnings(caplog: pytest.LogCaptureFixture, workflow_id: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and workflow_id in r.getMessage()
    ]


class TestVanishedWorkflows:
    async def test_a_delivery_of_an_unknown_workflow_is_skipped_once_and_the_worker_goes_on(
        self, env: Env, caplog: pytest.LogCaptureFixture
    ) -> None:
        # Given a worker, and a delivery of a workflow that was never stored (or expired)
        caplog.set_level(logging.WARNING, logger="aioworkflow")
        seen = count_deliveries(env)
        t = declare_task(env, max_retries=5, min_backoff=10, max_backoff=10)
        env.worker()
        ghost = t.message_with_options(args=("ghost",), **{OPTION: ["no-such-workflow", 0]})
        env.broker.enqueue(ghost)
        # When a good workflow is submitted after it
        handle = await Workflow(Chain(t.message("a"), t.message("b"))).run()
        # Then the good one runs to the end
        assert (await handle.wait(timeout=30)).state is State.SUCCEEDED
        await drain(env)
        # and the ghost was delivered once, never run, never retried, and said why
        assert seen.count[ghost.message_id] == 1
        assert env.rec.labels() == ["a", "b"]
        (warning,) = not_found_warnings(caplog, "no-such-workflow")
        assert "no longer exists" in warning

    async def test_a_workflow_deleted_mid_run_stops_quietly_without_retries(
        self, env: Env, caplog: pytest.LogCaptureFixture
    ) -> None:
        # Given a workflow whose first node is running
        caplog.set_level(logging.WARNING, logger="aioworkflow")
        seen = count_deliveries(env)
        t = declare_task(env, max_retries=5, min_backoff=10, max_backoff=10)
        running, go = threading.Event(), threading.Event()

        def gated(label: Any) -> str:
            running.set()
            assert go.wait(30)
            return str(label)

        g = env.actor(gated, actor_name=f"gated_{env.name}", max_retries=5, min_backoff=10)
        env.worker()
        handle = await Workflow(Chain(g.message("first"), t.message("after"))).run()
        await wait_for(running.is_set)
        # When its keys vanish (expiry, or an operator's DEL) and then the node returns
        delete_workflow(env, handle)
        go.set()
        await drain(env)
        # Then the completion is dropped with a warning: no retry, no successor, no error
        assert sum(seen.count.values()) == 1
        assert env.rec.labels() == []
        assert any("vanished" in w for w in not_found_warnings(caplog, handle.id))
        with pytest.raises(WorkflowNotFound):
            await handle.status()
        # and a late copy of the second node is skipped like any unknown workflow's delivery
        late = t.message_with_options(args=("late",), **{OPTION: [handle.id, 1]})
        env.broker.enqueue(late)
        await drain(env)
        assert seen.count[late.message_id] == 1
        assert env.rec.labels() == []


class TestOversizedResults:
    async def test_a_result_over_the_limit_fails_the_node_and_fires_on_failure_once(
        self, env: Env
    ) -> None:
        # Given a store that keeps results of up to 1000 bytes
        env.store.result_limit = 1000
        t = declare_task(env)
        calls: list[int] = []

        def big(size: int, *piped: Any) -> str:
            calls.append(size)
            # incompressible (lz4 finds repeats in random hex, not in base64): the limit is
            # on stored bytes
            return secrets.token_urlsafe(size * 3 // 4)

        b = env.actor(big, actor_name=f"big_{env.name}", max_retries=3, min_backoff=10)
        env.worker()
        # When a node returns a result that fits, then one that does not (piped onwards)
        handle = await Workflow(
            Chain(b.message(500), b.message(5000), t.message("after"), pipe=True),
            on_failure=t.message("failed"),
        ).run()
        status = await handle.wait(timeout=30)
        # Then the second node fails at once (a retry would return the same result) with the
        # sizes in the message, the successor never runs and on_failure fires once
        assert status.state is State.FAILED
        assert (status.failed_node, status.exc_type) == (1, "ResultTooLarge")
        assert status.exc_message is not None
        said = re.fullmatch(
            r"result of (\d+) bytes exceeds the cap of 1000 bytes", status.exc_message
        )
        assert said is not None, status.exc_message
        assert int(said[1]) >= 5000
        await wait_for(lambda: "failed" in env.rec.labels())
        await drain(env)
        assert calls == [500, 5000]
        assert env.rec.labels() == ["failed"]
        with pytest.raises(WorkflowFailed) as info:
            await handle.result(timeout=5)
        assert info.value.exc_type == "ResultTooLarge"


class TestLongRetries:
    async def test_retrying_past_the_retention_period_keeps_the_workflow_alive(
        self, env: Env
    ) -> None:
        # Given keys kept 1 s after the end, and a node that fails 4 times with 0.5-1 s back-off
        env.store.retention_ms = 1000
        t = declare_task(env)
        attempts: list[float] = []

        def flaky(label: Any) -> None:
            attempts.append(time.monotonic())
            if len(attempts) <= 4:
                raise RuntimeError(f"attempt {len(attempts)}")
            started = env.rec.start(label)
            env.rec.finish(label, started)

        f = env.actor(
            flaky, actor_name=f"flaky_{env.name}", max_retries=10, min_backoff=1000,
            max_backoff=1000,
        )  # fmt: skip
        env.worker()
        canvas = Chain(t.message("before"), f.message("flaky"), Group(t.message("after")))
        handle = await Workflow(canvas).run()
        client = None if isinstance(env.store, MemoryStore) else env.store.client
        keys = workflow_keys(handle.id)
        ttls: list[int] = []
        # When it runs for several retention periods
        while not (status := await handle.status()).done:
            if client is not None:
                ttls += [client.pttl(k) for k in (keys[0], keys[1], keys[-2])]  # meta cnt dag
            await asyncio.sleep(0.05)  # a probe every 50 ms: sampling, not waiting
        # Then no key had a TTL while it ran, and it succeeded in order
        assert status.state is State.SUCCEEDED
        assert len(attempts) == 5
        assert attempts[-1] - attempts[0] > 2.0, "the retries outlived the retention period"
        assert set(ttls) <= {-1}
        check_order(env, canvas, ["before", "flaky", "after"])
        # and it is gone one retention period after the end
        if client is not None:
            assert 0 < client.pttl(keys[0]) <= 1000
        await wait_for(lambda: _gone(env, handle.id, client), timeout=10)
        with pytest.raises(WorkflowNotFound):
            await handle.status()


def _gone(env: Env, workflow_id: str, client: redis.Redis | None) -> bool:
    if client is not None:
        return client.exists(*workflow_keys(workflow_id)) == 0
    return env.store.load(workflow_id) is None
