"""Workflows queued by dramatiq-workflow itself finish after the switch to the compat layer."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import dramatiq_workflow as dw

from tests.conftest import poll_until

if TYPE_CHECKING:
    from .conftest import CompatEnv


class TestRollingUpgrade:
    async def test_a_workflow_queued_by_dramatiq_workflow_finishes_on_the_compat_middleware(
        self, compat_env: CompatEnv
    ) -> None:
        # Given a workflow started by dramatiq-workflow, its first task queued, no worker yet
        old = dw.WorkflowMiddleware(compat_env.backend)
        compat_env.broker.add_middleware(old)
        t = compat_env.task()
        dw.Workflow(
            dw.Chain(
                t.message(1),
                dw.Group(t.message(2), t.message(3)),
                dw.WithDelay(dw.Chain(), 300),  # dramatiq-workflow's no-op task
                t.message(4),
            ),
            compat_env.broker,
        ).run()
        # When the fleet is upgraded: its middleware replaced by the compat one
        compat_env.broker.middleware.remove(old)
        compat_env.install()
        started = time.monotonic()
        compat_env.worker()
        # Then the in-flight workflow finishes with dramatiq-workflow's semantics
        await poll_until(lambda: len(compat_env.labels()) == 4, 30, "the old workflow finished")
        ran = compat_env.labels()
        assert ran[0] == 1
        assert sorted(ran[1:3]) == [2, 3]
        assert ran[3] == 4
        assert time.monotonic() - started >= 0.25  # the no-op's delay was kept

    async def test_new_and_old_workflows_run_side_by_side(self, compat_env: CompatEnv) -> None:
        from aioworkflow.compat.dramatiq_workflow import Chain, Workflow

        old = dw.WorkflowMiddleware(compat_env.backend)
        compat_env.broker.add_middleware(old)
        t = compat_env.task()
        dw.Workflow(dw.Chain(t.message("old1"), t.message("old2")), compat_env.broker).run()
        compat_env.broker.middleware.remove(old)
        compat_env.install()
        Workflow(Chain(t.message("new1"), t.message("new2")), compat_env.broker).run()
        compat_env.worker()
        await poll_until(lambda: len(compat_env.labels()) == 4, 30, "both workflows finished")
        ran = compat_env.labels()
        assert ran.index("old1") < ran.index("old2")
        assert ran.index("new1") < ran.index("new2")
