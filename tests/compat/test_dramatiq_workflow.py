"""dramatiq-workflow 0.3.0 programs run unchanged on the compat layer (Stub and Redis)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytest

from aioworkflow import State, SyncWorkflowHandle
from aioworkflow.compat.dramatiq_workflow import (
    Chain,
    Group,
    MiddlewareNotFound,
    WithDelay,
    Workflow,
    WorkflowTypeError,
    walk_messages,
)
from aioworkflow.errors import ConfigurationError, GraphError
from tests.conftest import poll_until

if TYPE_CHECKING:
    from .conftest import CompatEnv


def run_and_wait(env: CompatEnv, workflow: Workflow, expected: int) -> None:
    """Run from sync code, then block until it succeeded, having run ``expected`` tasks more."""
    before = len(env.labels())
    workflow.run()
    assert workflow.id is not None
    status = SyncWorkflowHandle.attach(workflow.id, broker=env.broker).wait(timeout=30)
    assert status.state is State.SUCCEEDED
    assert len(env.labels()) == before + expected


class TestRuns:
    def test_the_readme_shape_runs_each_task_once_in_order(self, compat_env: CompatEnv) -> None:
        compat_env.install()
        t = compat_env.task()
        canvas = Chain(
            t.message(1),
            Group(
                Chain(t.message(2), t.message(5)),
                t.message(3),
                Chain(t.message(4), Group(t.message(6), t.message(7))),
            ),
            t.message(8),
        )
        compat_env.worker()
        run_and_wait(compat_env, Workflow(canvas, compat_env.broker), 8)
        ran = compat_env.labels()
        assert sorted(ran) == list(range(1, 9))
        pos = {label: i for i, label in enumerate(ran)}
        for before, after in [(1, 2), (1, 3), (1, 4), (2, 5), (4, 6), (4, 7)]:
            assert pos[before] < pos[after]
        assert all(pos[x] < pos[8] for x in range(1, 8))

    def test_a_single_message_and_empty_steps(self, compat_env: CompatEnv) -> None:
        compat_env.install()
        t = compat_env.task()
        compat_env.worker()
        run_and_wait(compat_env, Workflow(t.message("only")), 1)
        run_and_wait(
            compat_env, Workflow(Chain(t.message("a"), Group(), Chain(), t.message("b"))), 2
        )
        assert compat_env.labels() == ["only", "a", "b"]

    def test_with_delay_holds_the_task_back(self, compat_env: CompatEnv) -> None:
        compat_env.install()
        t = compat_env.task()
        compat_env.worker()
        started = time.monotonic()
        run_and_wait(compat_env, Workflow(WithDelay(t.message("late"), delay=400)), 1)
        assert time.monotonic() - started >= 0.35

    def test_a_delayed_empty_chain_is_a_wait_step(self, compat_env: CompatEnv) -> None:
        compat_env.install()
        t = compat_env.task()
        compat_env.worker()
        started = time.monotonic()
        run_and_wait(
            compat_env, Workflow(Chain(WithDelay(Chain(), delay=400), t.message("after"))), 1
        )
        assert time.monotonic() - started >= 0.35

    async def test_run_works_inside_a_running_event_loop(self, compat_env: CompatEnv) -> None:
        compat_env.install()
        t = compat_env.task()
        compat_env.worker()
        wf = Workflow(Chain(t.message("x"), t.message("y")))
        wf.run()  # synchronous, as in dramatiq-workflow, even with this loop running
        await poll_until(lambda: len(compat_env.labels()) == 2, 30, "both tasks ran")
        assert compat_env.labels() == ["x", "y"]


class TestErrors:
    def test_an_unsupported_step_is_a_type_error(self, compat_env: CompatEnv) -> None:
        compat_env.install()
        t = compat_env.task()
        with pytest.raises(TypeError, match="Unsupported workflow type"):
            Workflow(Chain(t.message(1), "not a step")).run()  # type: ignore[arg-type]
        with pytest.raises(WorkflowTypeError):
            Workflow(Group(42)).run()  # type: ignore[arg-type]

    def test_an_argument_the_encoder_refuses_is_a_type_error(self, compat_env: CompatEnv) -> None:
        import datetime

        compat_env.install()
        t = compat_env.task()
        with pytest.raises(TypeError) as info:
            Workflow(t.message(datetime.datetime.now())).run()
        assert isinstance(info.value, GraphError)

    def test_no_middleware_is_a_runtime_error(self, compat_env: CompatEnv) -> None:
        t = compat_env.task()
        with pytest.raises(RuntimeError, match="WorkflowMiddleware"):
            Workflow(t.message(1)).run()
        with pytest.raises(MiddlewareNotFound):
            Workflow(t.message(1), compat_env.broker).run()

    def test_the_middleware_refuses_a_backend_it_cannot_map(self) -> None:
        from aioworkflow.compat.dramatiq_workflow import WorkflowMiddleware

        with pytest.raises(ConfigurationError, match="RedisBackend or StubBackend"):
            WorkflowMiddleware(object())


class TestModels:
    def test_chain_group_and_with_delay_keep_their_attributes(self, compat_env: CompatEnv) -> None:
        t = compat_env.task()
        a, b = t.message(1), t.message(2)
        chain, group, delayed = Chain(a, b), Group(a), WithDelay(a, 10)
        assert chain.tasks == [a, b]
        assert group.tasks == [a]
        assert (delayed.task, delayed.delay) == (a, 10)
        assert Chain(a, b) == chain
        assert Chain(a) != Group(a)
        assert WithDelay(a, 10) == delayed
        assert WithDelay(a, 11) != delayed
        assert str(Group()) == "Group([])"

    def test_walk_messages_yields_every_message_in_order(self, compat_env: CompatEnv) -> None:
        t = compat_env.task()
        msgs: list[Any] = [t.message(i) for i in range(4)]
        canvas = Chain(msgs[0], Group(WithDelay(msgs[1], 5), Chain(msgs[2])), msgs[3])
        assert list(walk_messages(canvas)) == msgs
