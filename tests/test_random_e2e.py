"""End to end: random canvases run on the real runtime, in every environment of ``env``.

Each example draws a canvas of up to about 40 leaves (nested chains, groups, short delays,
graphs with edges in any order, piped chains), runs it with a worker and checks the recorded
execution against the ordering computed from the canvas alone (``tests._canvas_strategies``):
every leaf ran exactly once, none started before all of its predecessors had finished, none
started before its delay had passed, and piped arguments and the workflow result are what
the compiled result specs say.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from typing import TYPE_CHECKING, Any, ClassVar

import pytest
from hypothesis import HealthCheck, Phase, given, note, settings

from aioworkflow import Chain, Group, State, Workflow, WorkflowTimeout, compile
from tests._canvas_strategies import assert_runs_respect, build, evaluate, sized_shapes
from tests.conftest import Recorder

if TYPE_CHECKING:
    from tests._canvas_strategies import Shape
    from tests.conftest import Env

#: Label blocks, one per example, so a late duplicate of an earlier run cannot pass unnoticed.
_blocks = itertools.count(1)


class _Leaves:
    """The two leaf actors of one env, and the piped arguments each label received."""

    def __init__(self, env: Env) -> None:
        self.lock = threading.Lock()
        self.piped: dict[int, tuple[Any, ...]] = {}

        def leaf(label: int, *piped: Any) -> int:
            started = env.rec.start(label)
            with self.lock:
                self.piped[label] = piped
            env.rec.finish(label, started)
            return label

        # Queues of this module only: the RabbitMQ server is shared with other test runs, whose
        # fixtures purge (and whose workers consume) the queues they declare, like "default".
        self.leaf = env.actor(leaf, actor_name=f"rand_leaf_{env.name}", queue_name="rand_e2e")
        self.other = env.actor(
            leaf, actor_name=f"rand_other_{env.name}", queue_name="rand_e2e_other"
        )

    def message(self, label: int, other: bool) -> Any:
        return (self.other if other else self.leaf).message(label)


@pytest.fixture
def leaves(env: Env) -> _Leaves:
    """The leaf actors and a worker, once per env: hypothesis runs every example on them."""
    declared = _Leaves(env)
    env.worker(threads=8)
    return declared


@pytest.mark.timeout(120)  # a stalled example waits 20 s, and hypothesis replays a failure
# The worker threads of a real broker draw from the global ``random`` while hypothesis draws a
# shape, which hypothesis mistakes for a strategy using ``random``: ignore that warning here.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
@settings(
    max_examples=20,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # shrinking real runs is too slow
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.large_base_example,
    ],
)
@given(shape=sized_shapes(min_leaves=10, max_leaves=40, max_delay=50))
async def test_random_canvases_run_each_node_once_in_order(
    env: Env, leaves: _Leaves, shape: Shape
) -> None:
    # Given a worker on this env and a fresh recorder for this example
    env.rec = Recorder()
    canvas = build(shape, leaves.message, itertools.count(next(_blocks) * 10_000))
    dag = compile(canvas)
    note(f"{len(dag)} nodes, {dag.edge_count} edges, {dag.n_joins} joins: {shape!r}")

    # When the canvas runs as a workflow
    started_at = time.monotonic()
    handle = await Workflow(canvas).run()
    try:
        status = await handle.wait(timeout=20)
    except WorkflowTimeout:
        ran = {label for label, _, _ in env.rec.runs}
        missing = sorted(n.args[0] for n in dag.nodes if n.args[0] not in ran)
        pytest.fail(f"stalled: {await handle.status()}; never ran: {missing}")
    result = await handle.result(timeout=5)

    # Then it succeeded, every node ran once and after its predecessors and delays
    assert status.state is State.SUCCEEDED, status
    assert (status.total, status.succeeded, status.failed) == (len(dag), len(dag), 0)
    assert_runs_respect(canvas, env.rec.runs, started_at=started_at)
    # and each piped argument and the workflow's result follow the compiled result specs
    labels = [node.args[0] for node in dag.nodes]
    for i, node in enumerate(dag.nodes):
        # a node in dag.pipes gets one more argument, even when the spec is None (an empty step)
        expected = (evaluate(node.pipe, labels),) if i in dag.pipes else ()
        assert leaves.piped[labels[i]] == expected, f"node {labels[i]} got a wrong piped input"
    assert result == evaluate(dag.result, labels)


class TestTheRunChecker:
    """``assert_runs_respect`` itself: it rejects each kind of bad execution."""

    @staticmethod
    def canvas() -> Any:
        # 0 -> {1, 2 (delayed 100 ms)} -> 3, built with the strategies' default leaves
        return build(
            ("chain", [("leaf", False), ("group", [("leaf", False), ("delay", 100, ("leaf", True))]),
                       ("leaf", False)], False)
        )  # fmt: skip

    GOOD: ClassVar[list[tuple[int, float, float]]] = [
        (0, 1.0, 1.1), (1, 1.2, 1.3), (2, 1.25, 1.4), (3, 1.5, 1.6)
    ]  # fmt: skip

    def test_accepts_a_valid_execution(self) -> None:
        assert_runs_respect(self.canvas(), self.GOOD, started_at=0.9)

    @pytest.mark.parametrize(
        ("runs", "match"),
        [
            (GOOD[:3], "exactly once"),  # a node never ran
            ([*GOOD, (1, 2.0, 2.1)], "exactly once"),  # a node ran twice
            ([*GOOD, (7, 2.0, 2.1)], "exactly once"),  # a stray label
            ([(0, 1.0, 1.3), *GOOD[1:]], "1 started before 0 finished"),
            ([*GOOD[:3], (3, 1.35, 1.6)], "3 started before 2 finished"),
            ([*GOOD[:2], (2, 1.15, 1.2), GOOD[3]], "2 started 0.050 s after its release"),
        ],
    )
    def test_rejects(self, runs: list[tuple[int, float, float]], match: str) -> None:
        with pytest.raises(AssertionError, match=match):
            assert_runs_respect(self.canvas(), runs, started_at=0.9)

    def test_a_delayed_root_counts_from_the_submission(self) -> None:
        canvas = build(("delay", 200, ("leaf", False)))
        assert_runs_respect(canvas, [(0, 1.2, 1.3)], started_at=1.0)
        with pytest.raises(AssertionError, match="delay is 200 ms"):
            assert_runs_respect(canvas, [(0, 1.1, 1.3)], started_at=1.0)


async def test_nan_and_big_int_results_pass_through_a_pipe(env: Env) -> None:
    # Given a piped chain whose first step returns values orjson alone would change or refuse
    seen: list[tuple[Any, ...]] = []

    def produce() -> list[Any]:
        return [math.nan, math.inf, 2**80]

    def consume(piped: list[Any]) -> int:
        seen.append(tuple(piped))
        return len(piped)

    p = env.actor(produce, actor_name=f"produce_{env.name}", queue_name="rand_e2e")
    c = env.actor(consume, actor_name=f"consume_{env.name}", queue_name="rand_e2e")
    env.worker()
    # When it runs
    handle = await Workflow(Chain(p.message(), Group(c.message()), pipe=True)).run()
    # Then the next step and the workflow result get exactly what was returned
    assert await handle.result(timeout=20) == [3]
    [(nan, inf, big)] = seen
    assert math.isnan(nan)
    assert (inf, big) == (math.inf, 2**80)
