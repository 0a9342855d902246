"""End to end: workflows run on real brokers and stores, in every environment of ``env``.

memory: StubBroker + MemoryStore; redis: RedisBroker + RedisStore (scripts enqueue directly);
rabbitmq: RabbitmqBroker + RedisStore (ready set, worker enqueues, reconciler).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import pytest

from aioworkflow import Chain, Graph, Group, State, WithDelay, Workflow, compile

if TYPE_CHECKING:
    from tests.conftest import Env


def declare_task(env: Env, name: str = "task", **options: Any) -> Any:
    """A no-op task that records its start and end."""

    def task(label: Any, *piped: Any) -> None:
        started = env.rec.start(label)
        env.rec.finish(label, started)

    return env.actor(task, actor_name=f"{name}_{env.name}", **options)


def check_order(env: Env, canvas: Any, labels: list[Any]) -> None:
    """Every node ran exactly once, and never before all its predecessors had finished."""
    dag = compile(canvas)
    ran = env.rec.labels()
    assert sorted(map(str, ran)) == sorted(map(str, labels)), "every node runs exactly once"
    times = {label: (start, end) for label, start, end in env.rec.runs}
    for i in range(len(dag)):
        for j in dag.task_successors(i):
            a, b = dag.node(i).args[0], dag.node(j).args[0]
            assert times[a][1] <= times[b][0], f"{b} started before {a} finished"


class TestRunsToCompletion:
    async def test_the_readme_example_runs_in_dependency_order(self, env: Env) -> None:
        # Given the dramatiq-workflow README example
        t = declare_task(env)
        canvas = Chain(
            t.message(1),
            Group(
                Chain(t.message(2), t.message(5)),
                t.message(3),
                Chain(t.message(4), Group(t.message(6), t.message(7))),
            ),
            t.message(8),
        )
        env.worker()
        # When it runs
        handle = await Workflow(canvas).run()
        status = await handle.wait(timeout=30)
        # Then every task ran once, after its predecessors
        assert status.state is State.SUCCEEDED
        assert (status.total, status.succeeded, status.failed) == (8, 8, 0)
        check_order(env, canvas, list(range(1, 9)))

    async def test_a_group_of_2000_finishing_concurrently_releases_the_join_once(
        self, env: Env
    ) -> None:
        t = declare_task(env)
        canvas = Chain(
            t.message("first"), Group(*[t.message(i) for i in range(2000)]), t.message("last")
        )
        env.worker(threads=8)
        handle = await Workflow(canvas).run()
        status = await handle.wait(timeout=120)
        assert status.state is State.SUCCEEDED
        ran = env.rec.labels()
        assert ran.count("last") == 1
        assert ran.count("first") == 1
        assert len(ran) == 2002
        check_order(env, canvas, ["first", "last", *range(2000)])

    async def test_group_after_group_and_graph_edges(self, env: Env) -> None:
        t = declare_task(env)
        g = Graph()
        a = g.add(t.message("a"))
        b = g.add(t.message("b"), after=[a])
        c = g.add(Group(t.message("c1"), t.message("c2")), after=[a])
        g.add(t.message("d"), after=[b, c])
        canvas = Chain(
            Group(*[t.message(f"x{i}") for i in range(5)]),
            Group(*[t.message(f"y{i}") for i in range(5)]),
            g,
        )
        env.worker()
        status = await (await Workflow(canvas).run()).wait(timeout=30)
        assert status.state is State.SUCCEEDED
        labels = (
            [f"x{i}" for i in range(5)] + [f"y{i}" for i in range(5)] + ["a", "b", "c1", "c2", "d"]
        )
        check_order(env, canvas, labels)

    async def test_empty_workflows_succeed_at_once_and_fire_on_success(self, env: Env) -> None:
        t = declare_task(env)
        env.worker()
        handle = await Workflow(Chain(Group(), Chain()), on_success=t.message("cb")).run()
        status = await handle.wait(timeout=10)
        assert status.state is State.SUCCEEDED
        assert status.total == 0
        await wait_for(lambda: env.rec.labels() == ["cb"])

    async def test_with_delay_starts_a_node_no_earlier_than_its_delay(self, env: Env) -> None:
        t = declare_task(env)
        env.worker()
        canvas = Chain(t.message("a"), WithDelay(t.message("b"), delay=700))
        status = await (await Workflow(canvas).run()).wait(timeout=30)
        assert status.state is State.SUCCEEDED
        times = {label: (s, e) for label, s, e in env.rec.runs}
        assert times["b"][0] - times["a"][1] >= 0.65

    async def test_async_actors_run_as_nodes(self, env: Env) -> None:
        async def atask(label: Any) -> Any:
            started = env.rec.start(label)
            await asyncio.sleep(0.01)
            env.rec.finish(label, started)

        a = env.actor(atask, actor_name=f"atask_{env.name}")
        env.worker()
        canvas = Chain(a.message(1), Group(a.message(2), a.message(3)), a.message(4))
        status = await (await Workflow(canvas).run()).wait(timeout=30)
        assert status.state is State.SUCCEEDED
        check_order(env, canvas, [1, 2, 3, 4])

    async def test_on_success_gets_the_workflow_id_once(self, env: Env) -> None:
        t = declare_task(env)
        env.worker()
        handle = await Workflow(
            Group(t.message(1), t.message(2)), on_success=t.message("done")
        ).run()
        await handle.wait(timeout=30)
        await wait_for(lambda: any(isinstance(x, str) and x == "done" for x in env.rec.labels()))
        await asyncio.sleep(0.2)
        assert env.rec.labels().count("done") == 1


class TestEvents:
    async def test_events_report_each_release_completion_and_state_in_order(self, env: Env) -> None:
        t = declare_task(env)
        env.worker()
        canvas = Chain(t.message(0), Group(t.message(1), t.message(2)), t.message(3))
        handle = await Workflow(canvas, audit=True).run()
        await handle.wait(timeout=30)
        events = [e async for e in handle.events()]
        released = [e.node for e in events if e.kind == "node_released" and e.node is not None]
        succeeded = [e.node for e in events if e.kind == "node_succeeded" and e.node is not None]
        assert sorted(released) == [0, 1, 2, 3]  # each node released exactly once
        assert sorted(succeeded) == [0, 1, 2, 3]
        assert [e.state for e in events if e.kind == "state"] == [State.RUNNING, State.SUCCEEDED]
        position = {(e.kind, e.node): i for i, e in enumerate(events)}
        assert position[("node_succeeded", 0)] < position[("node_released", 1)]
        assert position[("node_succeeded", 1)] < position[("node_released", 3)]
        assert position[("node_succeeded", 2)] < position[("node_released", 3)]


class TestMessages:
    async def test_message_size_does_not_grow_with_the_workflow(self, redis_url: str) -> None:
        # Given a RedisBroker env (direct mode) and no worker, so messages stay queued
        import redis

        from tests.conftest import make_env

        redis.Redis.from_url(redis_url).flushdb()
        env = make_env("redis", redis_url)
        try:
            t = declare_task(env)
            client = redis.Redis.from_url(redis_url)
            sizes = []
            for n in (1, 3000):
                client.delete("dramatiq:default.msgs", "dramatiq:default")
                # When workflows of 1 and 3000 roots start
                await Workflow(Chain(Group(*[t.message(i) for i in range(n)]), t.message(0))).run()
                payloads = client.hvals("dramatiq:default.msgs")
                assert len(payloads) == n
                sizes.append((min(len(p) for p in payloads), max(len(p) for p in payloads)))
            # Then a message carries only the workflow id and node index besides its args:
            # node 0 (same args, same index) costs the same bytes in both workflows, and the
            # largest message only grows by the digits of its index and arguments
            assert sizes[0][0] == sizes[1][0], sizes
            # (300 before messages kept the user's 36-character message_id and gained a push
            # id in their ref: 281 -> 320 bytes here)
            assert sizes[1][1] < 340
            client.close()
        finally:
            env.close()
            await env.store.aclose()
            env.store.close()

    async def test_successes_are_acked_by_the_completion_script(self, redis_url: str) -> None:
        # Given a RedisBroker env (direct mode) whose broker counts dramatiq's own ack calls
        import redis

        from tests.conftest import make_env

        redis.Redis.from_url(redis_url).flushdb()
        env = make_env("redis", redis_url)
        try:
            t = declare_task(env)
            acks: list[tuple[Any, ...]] = []
            real_ack = env.broker.do_ack  # type: ignore[attr-defined]

            def counting_ack(*args: Any) -> Any:
                acks.append(args)
                return real_ack(*args)

            env.broker.do_ack = counting_ack  # type: ignore[attr-defined]
            env.worker()
            # When a workflow of 51 nodes runs, plus one plain dramatiq message
            canvas = Chain(t.message("a"), Group(*[t.message(i) for i in range(50)]))
            handle = await Workflow(canvas).run()
            assert (await handle.wait(timeout=30)).state is State.SUCCEEDED
            t.send("plain")
            await wait_for(lambda: "plain" in env.rec.labels() and len(acks) == 1)
            # Then only the plain message took dramatiq's ack round trip; the workflow's
            # deliveries were acked inside complete.lua: no payload or ack entry is left over
            env.broker.join(t.queue_name)
            client = redis.Redis.from_url(redis_url)
            assert client.hlen(f"dramatiq:{t.queue_name}.msgs") == 0
            assert [k for k in client.keys("dramatiq:__acks__.*") if client.scard(k)] == []
            assert client.zscore("dramatiq:__heartbeats__", env.broker.broker_id) is not None  # type: ignore[attr-defined]
            client.close()
        finally:
            env.close()
            await env.store.aclose()
            env.store.close()


async def wait_for(cond: Any, timeout: float = 10.0) -> None:  # noqa: ASYNC109
    """Await a condition set by worker threads (polls; the condition has no event to await)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        await asyncio.sleep(0.02)
