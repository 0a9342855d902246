"""Failures, callbacks, cancel, pause/resume, retry, results and duplicates, end to end.

Each test runs in every environment of the ``env`` fixture (memory, redis, rabbitmq).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import pytest
from dramatiq.brokers.stub import StubBroker

from aioworkflow import (
    Chain,
    Group,
    State,
    Workflow,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowHandle,
    WorkflowTimeout,
)
from aioworkflow._plan import OPTION
from tests.test_runtime import check_order, declare_task, wait_for

if TYPE_CHECKING:
    import dramatiq

    from tests.conftest import Env


async def drain(env: Env) -> None:
    """Wait until the broker's queues are empty and every worker is idle."""

    def join() -> None:
        for queue in env.broker.get_declared_queues():
            if isinstance(env.broker, StubBroker):
                env.broker.join(queue, fail_fast=False)
            else:
                env.broker.join(queue)
        for w in env.workers:
            w.join()

    await anyio.to_thread.run_sync(join)


def copy_of(
    env: Env, handle: WorkflowHandle, node: int, actor: Any, label: Any
) -> dramatiq.Message[Any]:
    """A stray delivery of a node: same workflow and node, a new message id."""
    msg: dramatiq.Message[Any] = actor.message_with_options(
        args=(label,), **{OPTION: [handle.id, node]}
    )
    return msg


class TestFailure:
    async def test_a_node_fails_only_after_its_last_retry_and_on_failure_fires_once(
        self, env: Env
    ) -> None:
        attempts: list[int] = []
        t = declare_task(env)

        def flaky(label: Any) -> None:
            attempts.append(1)
            raise ValueError(f"bad {label}")

        f = env.actor(
            flaky, actor_name=f"flaky_{env.name}", max_retries=2, min_backoff=10, max_backoff=20
        )
        env.worker()
        handle = await Workflow(
            Chain(f.message("x"), t.message("after")), on_failure=t.message("failed")
        ).run()
        status = await handle.wait(timeout=30)
        assert status.state is State.FAILED
        assert len(attempts) == 3
        assert (status.failed_node, status.failed_actor, status.exc_type) == (
            0,
            f"flaky_{env.name}",
            "ValueError",
        )
        assert status.exc_message == "bad x"
        await wait_for(lambda: "failed" in env.rec.labels())
        await drain(env)
        assert env.rec.labels() == ["failed"]  # "after" never ran; the callback ran once
        with pytest.raises(WorkflowFailed) as info:
            await handle.result(timeout=5)
        assert info.value.node == 0
        assert info.value.exc_type == "ValueError"

    async def test_two_branches_failing_together_fire_on_failure_once(self, env: Env) -> None:
        t = declare_task(env)
        gate = threading.Barrier(2)

        def boom(label: Any) -> None:
            gate.wait(timeout=10)
            raise KeyError(label)

        b = env.actor(boom, actor_name=f"boom_{env.name}", max_retries=0)
        env.worker()
        handle = await Workflow(
            Group(b.message(1), b.message(2)), on_failure=t.message("failed")
        ).run()
        assert (await handle.wait(timeout=30)).state is State.FAILED
        await wait_for(lambda: "failed" in env.rec.labels())
        await drain(env)
        assert env.rec.labels() == ["failed"]
        assert (await handle.status()).failed == 2

    async def test_retry_after_fixing_the_cause_completes_the_workflow(self, env: Env) -> None:
        broken = {"yes": True}
        t = declare_task(env)

        def fragile(label: Any) -> None:
            if broken["yes"]:
                raise RuntimeError("not yet")
            t.fn(label)

        fr = env.actor(fragile, actor_name=f"fragile_{env.name}", max_retries=0)
        env.worker()
        canvas = Chain(t.message("a"), Group(fr.message("b"), t.message("c")), t.message("d"))
        handle = await Workflow(canvas).run()
        assert (await handle.wait(timeout=30)).state is State.FAILED
        broken["yes"] = False
        first = await handle.retry()
        second = await handle.retry()
        assert first.changed
        assert first.state is State.RUNNING
        assert not second.changed
        assert (await handle.wait(timeout=30)).state is State.SUCCEEDED
        check_order(env, canvas, ["a", "b", "c", "d"])


class TestCancel:
    async def test_cancel_mid_group_runs_no_member_after_it_returns(self, env: Env) -> None:
        def slow(label: Any) -> None:
            started = env.rec.start(label)
            time.sleep(0.002)
            env.rec.finish(label, started)

        s = env.actor(slow, actor_name=f"slow_{env.name}")
        env.worker(threads=8)
        handle = await Workflow(
            Chain(Group(*[s.message(i) for i in range(1000)]), s.message("end"))
        ).run()
        await wait_for(lambda: len(env.rec.starts) >= 300, timeout=60)
        answer = await handle.cancel()
        returned = time.monotonic()
        assert answer.changed
        assert answer.state is State.CANCELLED
        await drain(env)
        late = [label for label, at in env.rec.starts if at > returned]
        assert len(late) <= 8, "only deliveries already claimed by the 8 threads may start"
        assert len(env.rec.starts) < 1000
        assert "end" not in env.rec.labels()
        assert (await handle.status()).state is State.CANCELLED
        again = await handle.cancel()
        assert not again.changed
        assert again.state is State.CANCELLED
        with pytest.raises(WorkflowCancelled):
            await handle.result(timeout=1)

    async def test_cancel_after_success_is_a_no_op(self, env: Env) -> None:
        t = declare_task(env)
        env.worker()
        handle = await Workflow(t.message(1)).run()
        await handle.wait(timeout=30)
        answer = await handle.cancel()
        assert not answer.changed
        assert answer.state is State.SUCCEEDED


class TestPause:
    async def test_pause_holds_everything_and_resume_releases_it_exactly_once(
        self, env: Env
    ) -> None:
        def slow(label: Any) -> None:
            started = env.rec.start(label)
            time.sleep(0.002)
            env.rec.finish(label, started)

        s = env.actor(slow, actor_name=f"slow_{env.name}")
        env.worker(threads=8)
        canvas = Chain(Group(*[s.message(i) for i in range(300)]), s.message("end"))
        handle = await Workflow(canvas).run()
        await wait_for(lambda: len(env.rec.starts) >= 50, timeout=60)
        paused = await handle.pause()
        returned = time.monotonic()
        assert paused.changed
        assert paused.state is State.PAUSED
        assert not (await handle.pause()).changed
        await drain(env)  # held deliveries are skipped, not run, and not lost
        assert len([1 for _, at in env.rec.starts if at > returned]) <= 8
        before = len(env.rec.starts)
        assert before < 301
        resumed = await handle.resume()
        assert resumed.changed
        assert not (await handle.resume()).changed
        assert (await handle.wait(timeout=60)).state is State.SUCCEEDED
        check_order(env, canvas, [*range(300), "end"])


class TestResults:
    async def test_piped_results_through_chains_groups_and_nested_chains(self, env: Env) -> None:
        seen: dict[str, tuple[Any, ...]] = {}

        def step(name: str, *args: Any) -> Any:
            seen[name] = args
            return {"a": 1, "b": [2, 3], "c": 4, "d": "dee", "e": 5}[name]

        st = env.actor(step, actor_name=f"step_{env.name}")
        env.worker()
        canvas = Chain(
            st.message("a"),
            Group(
                Chain(st.message("b"), pipe=False),
                Chain(st.message("c"), st.message("d"), pipe=True),
            ),
            st.message("e"),
            pipe=True,
        )
        handle = await Workflow(canvas).run()
        assert await handle.result(timeout=30) == 5
        assert seen["b"] == (1,)
        assert seen["c"] == (1,)
        assert seen["d"] == (4,)
        assert seen["e"] == ([[2, 3], "dee"],)

    async def test_result_of_a_group_workflow_is_the_list_in_definition_order(
        self, env: Env
    ) -> None:
        def square(x: int) -> int:
            time.sleep(0.001 * (5 - x))
            return x * x

        sq = env.actor(square, actor_name=f"square_{env.name}")
        env.worker()
        handle = await Workflow(Group(*[sq.message(i) for i in range(5)])).run()
        assert await handle.result(timeout=30) == [0, 1, 4, 9, 16]

    async def test_result_times_out_with_a_typed_error(self, env: Env) -> None:
        t = declare_task(env)
        handle = await Workflow(t.message(1)).run()  # no worker: it never finishes
        with pytest.raises(WorkflowTimeout):
            await handle.result(timeout=0.2)


class TestDuplicates:
    async def test_copies_of_completed_messages_are_skipped(self, env: Env) -> None:
        t = declare_task(env)
        env.worker()
        canvas = Chain(t.message(0), Group(t.message(1), t.message(2)), t.message(3))
        handle = await Workflow(canvas).run()
        await handle.wait(timeout=30)
        for node in range(4):
            env.broker.enqueue(copy_of(env, handle, node, t, f"copy{node}"))
        await drain(env)
        assert sorted(env.rec.labels()) == [0, 1, 2, 3]
        assert (await handle.status()).succeeded == 4

    async def test_copies_of_in_flight_group_members_never_run_a_successor_early_or_twice(
        self, env: Env
    ) -> None:
        def slow(label: Any) -> None:
            started = env.rec.start(label)
            time.sleep(0.003)
            env.rec.finish(label, started)

        s = env.actor(slow, actor_name=f"slow_{env.name}")
        canvas = Chain(
            s.message("first"), Group(*[s.message(i) for i in range(100)]), s.message("last")
        )
        env.worker(threads=8)
        handle = await Workflow(canvas).run()
        # stray copies of every group member, sent while the group is pending or running
        for node in range(1, 101):
            env.broker.enqueue(copy_of(env, handle, node, s, node - 1))
        assert (await handle.wait(timeout=60)).state is State.SUCCEEDED
        await drain(env)
        labels = env.rec.labels()
        assert labels.count("last") == 1
        assert labels.count("first") == 1
        check_order(env, canvas, ["first", *range(100), "last"])
