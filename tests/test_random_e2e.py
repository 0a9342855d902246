"""Random canvases run end to end: every node once, never before all its predecessors."""

from __future__ import annotations

import itertools
import random
from typing import TYPE_CHECKING, Any

import anyio

from aioworkflow import State, Workflow
from tests._canvas_strategies import build, random_shape, required_order

if TYPE_CHECKING:
    from tests.conftest import Env


async def test_random_canvases_run_in_canvas_order(env: Env) -> None:
    # Given 12 random nested Chain/Group/WithDelay/Graph canvases of 1-40 tasks
    rng = random.Random(20261123)
    labels = itertools.count()

    def task(label: int, *piped: Any) -> None:
        started = env.rec.start(label)
        env.rec.finish(label, started)

    t = env.actor(task, actor_name=f"rand_{env.name}")
    canvases = []
    for _ in range(12):
        shape = random_shape(rng, rng.randint(1, 40))
        canvases.append(build(shape, labels, leaf_actor=t))
    env.worker(threads=8)

    # When they all run at once
    async def run_one(canvas: Any, states: list[State]) -> None:
        handle = await Workflow(canvas).run()
        states.append((await handle.wait(timeout=60)).state)

    states: list[State] = []
    async with anyio.create_task_group() as tg:
        for canvas in canvases:
            tg.start_soon(run_one, canvas, states)

    # Then every workflow succeeded, every node ran exactly once, after its predecessors
    assert states == [State.SUCCEEDED] * len(canvases)
    runs = {label: (start, end) for label, start, end in env.rec.runs}
    all_labels = [label for c in canvases for label in required_order(c)[0]]
    assert sorted(env.rec.labels()) == sorted(all_labels)
    for canvas in canvases:
        for a, b in required_order(canvas)[1]:
            assert runs[a][1] <= runs[b][0], f"{b} started before {a} finished"
