"""The async client: non-blocking submit, handles, errors at the earliest point, sync twin."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator  # noqa: TC003 - fixtures' types
from typing import Any, Self

import pytest
import redis
from blockbuster import BlockingError, blockbuster_ctx
from dramatiq.brokers.stub import StubBroker

from aioworkflow import (
    Chain,
    ConfigurationError,
    GraphError,
    Group,
    MemoryStore,
    MessageTooLarge,
    RedisStore,
    State,
    SyncWorkflowHandle,
    Workflow,
    WorkflowExists,
    WorkflowHandle,
    WorkflowMiddleware,
    WorkflowNotFound,
)
from aioworkflow._store import _redis
from aioworkflow._store._scripts import ScriptName
from aioworkflow.errors import StoreConnectionError
from tests.conftest import Env, make_env
from tests.test_control import drain
from tests.test_runtime import declare_task


@pytest.fixture
async def redis_env(redis_url: str) -> AsyncIterator[Env]:
    redis.Redis.from_url(redis_url).flushdb()
    env = make_env("redis", redis_url)
    yield env
    env.close()
    await env.store.aclose()
    env.store.close()


class LagProbe:
    """Measures the event loop's longest stall: a task that sleeps 1 ms in a loop."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            self.worst = max(self.worst, time.perf_counter() - before - 0.001)

    def __enter__(self) -> Self:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


class TestSubmit:
    async def test_submitting_10000_nodes_never_blocks_the_event_loop(self, redis_env: Env) -> None:
        # Given a 10,000-node workflow
        t = declare_task(redis_env)
        canvas = Chain(
            Group(*[t.message(i) for i in range(5000)]), Group(*[t.message(i) for i in range(5000)])
        )
        # When it is submitted under a blocking-call detector, then no blocking call runs on
        # the loop (blockbuster raises BlockingError inside the loop thread if one does)
        with blockbuster_ctx(["aioworkflow", "redis", "dramatiq"]):
            handle = await Workflow(canvas).run()
        assert (await handle.status()).total == 10_000
        # and, measured without the detector's overhead, the loop never stalls for long
        # (compiling runs in a thread; what remains is GIL hand-over and reply parsing)
        with LagProbe() as probe:
            await asyncio.sleep(0.01)  # let the probe start
            again = await Workflow(canvas).run()
        assert (await again.status()).total == 10_000
        assert probe.worst < 0.1, f"event loop stalled {probe.worst * 1000:.0f} ms"

    def test_the_blocking_detector_catches_a_blocking_call(self) -> None:
        async def blocking() -> None:
            time.sleep(0.001)  # noqa: ASYNC251 - the blocking call under detection

        with blockbuster_ctx(), pytest.raises(BlockingError, match=r"time\.sleep"):
            asyncio.run(blocking())

    async def test_a_bad_canvas_fails_before_anything_is_stored(self, redis_env: Env) -> None:
        t = declare_task(redis_env)
        with pytest.raises(GraphError, match="cannot be encoded"):
            await Workflow(Chain(t.message(1), t.message(object())), id="bad").run()
        with pytest.raises(WorkflowNotFound):
            await WorkflowHandle("bad").status()

    async def test_oversized_arguments_fail_at_run_naming_the_node(self, redis_env: Env) -> None:
        t = declare_task(redis_env)
        big = "x" * (2 << 20)
        canvas = Chain(t.message(1), Group(t.message(2), t.message(big)))
        with pytest.raises(MessageTooLarge, match=r"node 2 \(task_redis\).*exceed") as info:
            await Workflow(canvas, id="big", max_message_bytes=1 << 20).run()
        assert (info.value.node, info.value.limit) == (2, 1 << 20)
        assert info.value.size > 2 << 20
        with pytest.raises(WorkflowNotFound):
            await WorkflowHandle("big").status()
        # the same canvas under the default cap (8 MiB) is accepted
        handle = await Workflow(canvas, id="big").run()
        assert (await handle.status()).total == 3

    async def test_a_taken_id_is_refused_and_the_first_workflow_is_untouched(
        self, redis_env: Env
    ) -> None:
        t = declare_task(redis_env)
        first = await Workflow(Group(t.message(1), t.message(2)), id="same").run()
        with pytest.raises(WorkflowExists):
            await Workflow(t.message(3), id="same").run()
        status = await first.status()
        assert (status.total, status.state) == (2, State.RUNNING)

    @pytest.mark.parametrize(
        "lost",
        [("submit", ""), ("start", "first"), ("start", "more"), ("start", "last")],
        ids=["claim", "first-chunk", "middle-chunk", "last-chunk"],
    )
    async def test_a_submission_whose_reply_is_lost_is_retried_and_releases_each_root_once(
        self, redis_env: Env, monkeypatch: pytest.MonkeyPatch, lost: tuple[str, str]
    ) -> None:
        # Given a store whose connection drops once, right after Redis ran one of the submit
        # steps (the step took effect; its reply is lost), and roots released in chunks of 10
        monkeypatch.setattr(_redis, "ROOT_CHUNK", 10)
        driver = redis_env.store.aio()
        real = driver._run
        calls: list[str] = []

        async def reply_lost(name: ScriptName, keys: list[str], args: list[Any]) -> Any:
            step = name.value if name is not ScriptName.START else args[1]
            if name is ScriptName.START and args[1] == "more" and args[2] == 20:
                step = "last"
            calls.append(f"{name.value}:{step}")
            reply = await real(name, keys, args)
            if (name.value, step if name is ScriptName.START else "") == lost and calls.count(
                calls[-1]
            ) == 1:
                raise StoreConnectionError("connection lost before the reply")
            return reply

        monkeypatch.setattr(driver, "_run", reply_lost)
        t = declare_task(redis_env)
        # When a workflow with 25 roots is run
        handle = await Workflow(
            Chain(Group(*[t.message(i) for i in range(25)]), t.message("z"))
        ).run()
        # Then run() retried and returned, the step ran again or was found done
        assert len(calls) > len(set(calls)), calls
        assert (await handle.status()).total == 26
        # and each root was enqueued once, and every node runs exactly once
        assert redis_env.store.client.hlen(f"dramatiq:{t.queue_name}.msgs") == 25
        redis_env.worker()
        assert (await handle.wait(timeout=30)).state is State.SUCCEEDED
        await drain(redis_env)
        assert sorted(map(str, redis_env.rec.labels())) == sorted(map(str, [*range(25), "z"]))

    @pytest.mark.parametrize("lost", ["before", "after"])
    async def test_a_small_submission_whose_one_round_trip_is_lost_releases_each_root_once(
        self, redis_env: Env, monkeypatch: pytest.MonkeyPatch, lost: str
    ) -> None:
        # Given a store whose connection drops once around the one-round-trip upload + start
        # of a small workflow (before: nothing sent; after: it applied, its reply is lost)
        driver = redis_env.store.aio()
        real = driver._upload_and_start
        calls: list[str] = []

        async def reply_lost(*args: Any) -> Any:
            calls.append("fused")
            if lost == "before" and len(calls) == 1:
                raise StoreConnectionError("connection lost before the request")
            reply = await real(*args)
            if lost == "after" and len(calls) == 1:
                raise StoreConnectionError("connection lost before the reply")
            return reply

        monkeypatch.setattr(driver, "_upload_and_start", reply_lost)
        t = declare_task(redis_env)
        # When a workflow with 5 roots is run
        handle = await Workflow(
            Chain(Group(*[t.message(i) for i in range(5)]), t.message("z"))
        ).run()
        # Then the one-round-trip path ran (again only if nothing had applied)
        assert calls == (["fused", "fused"] if lost == "before" else ["fused"])
        assert (await handle.status()).total == 6
        # and each root was enqueued once, and every node runs exactly once
        assert redis_env.store.client.hlen(f"dramatiq:{t.queue_name}.msgs") == 5
        redis_env.worker()
        assert (await handle.wait(timeout=30)).state is State.SUCCEEDED
        await drain(redis_env)
        assert sorted(map(str, redis_env.rec.labels())) == sorted(map(str, [*range(5), "z"]))

    async def test_running_without_the_middleware_is_a_configuration_error(self) -> None:
        with pytest.raises(ConfigurationError, match="WorkflowMiddleware"):
            await Workflow(Chain(), id="x").run(broker=StubBroker())


class TestHandles:
    async def test_a_handle_reattaches_by_id(self, redis_env: Env) -> None:
        t = declare_task(redis_env)
        redis_env.worker()
        handle = await Workflow(Chain(t.message(1), t.message(2))).run()
        again = WorkflowHandle(
            handle.id, broker=redis_env.broker, store=RedisStore(url=redis_env.store.url)
        )
        status = await again.wait(timeout=30)
        assert status.state is State.SUCCEEDED
        assert status.succeeded == 2
        await again.store.aclose()

    async def test_unknown_ids_raise_workflow_not_found(self, redis_env: Env) -> None:
        handle = WorkflowHandle("nope")
        with pytest.raises(WorkflowNotFound):
            await handle.status()
        with pytest.raises(WorkflowNotFound):
            await handle.cancel()
        with pytest.raises(WorkflowNotFound):
            await handle.wait(timeout=1)


@pytest.fixture
def memory_env() -> Iterator[Env]:
    broker = StubBroker()
    store = MemoryStore()
    mw = WorkflowMiddleware(store)
    broker.add_middleware(mw)
    env = Env("memory", broker, store, mw)
    yield env
    env.close()


class TestSyncTwin:
    def test_run_sync_returns_a_blocking_handle_that_waits(self, memory_env: Env) -> None:
        t = declare_task(memory_env)
        memory_env.worker()
        handle = Workflow(Chain(t.message(1), Group(t.message(2), t.message(3)))).run_sync(
            broker=memory_env.broker
        )
        assert isinstance(handle, SyncWorkflowHandle)
        status = handle.wait(timeout=30)
        assert status.state is State.SUCCEEDED
        assert status.succeeded == 3
        assert handle.status().state is State.SUCCEEDED
        kinds = [e.kind for e in handle.events()]
        assert kinds.count("node_succeeded") == 3
        assert not handle.cancel().changed
