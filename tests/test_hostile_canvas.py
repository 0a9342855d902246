"""Hostile canvases fail early with a typed error, never a RecursionError (issue 13).

Deep nesting (1,000 and 100,000 levels) of every kind of step goes through construction,
``compile()``, encoding, pickling, the reference ``evaluate`` and the CLI's ``graph``;
delays are bounded where they are given; ``compile(max_nodes=...)`` counts before it builds.
"""

from __future__ import annotations

import math
import pickle
import sys
import time
from typing import TYPE_CHECKING, Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from aioworkflow import (
    Chain,
    Dag,
    Graph,
    GraphError,
    Group,
    WithDelay,
    WorkflowTooLarge,
    compile,
)
from aioworkflow._compiler import DEFAULT_MAX_NODES, MAX_RESULT_DEPTH, _measure
from aioworkflow._graph import MAX_DELAY_MS, Step
from aioworkflow.cli import main
from tests._canvas_strategies import evaluate

if TYPE_CHECKING:
    from redis import Redis

_broker = StubBroker()
DEPTHS = [1_000, 100_000]


@dramatiq.actor(broker=_broker)
def t(label: Any, *piped: Any) -> None:
    """A task (never run)."""


#: The message beside each chain level of a "mixed" nesting (one object, used many times).
SIBLING = t.message(1)


def nest(kind: str, depth: int, leaf: Any = None) -> Step:
    """One message (``leaf``, or a new one) inside ``depth`` levels of ``kind``."""
    step: Step = leaf if leaf is not None else t.message(0)
    for _ in range(depth):
        if kind == "chain":
            step = Chain(step)
        elif kind == "group":
            step = Group(step)
        elif kind == "delay":
            step = WithDelay(step, delay=1)
        elif kind == "graph":
            g = Graph()
            g.add(step)
            step = g
        elif kind == "group-in-chain":
            step = Chain(t.message(1), Group(step))
        else:  # alternating chains (with a sibling) and delays
            step = Chain(SIBLING, step) if len(kind) % 2 else WithDelay(step, delay=1)
            kind += "x"
    return step


def deep_chain() -> Step:
    """A target for ``aioworkflow graph``: a chain nested 100,000 levels deep."""
    return nest("chain", 100_000)


@pytest.fixture(autouse=True)
def _low_recursion_limit() -> Any:
    """Default Python limit: nothing may lean on a raised one."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(1_000)
    yield
    sys.setrecursionlimit(old)


class TestDeepNesting:
    @pytest.mark.parametrize("depth", DEPTHS)
    @pytest.mark.parametrize("kind", ["chain", "delay", "mixed"])
    def test_compiles_encodes_and_pickles(self, kind: str, depth: int) -> None:
        canvas = nest(kind, depth)
        dag = compile(canvas)
        assert Dag.decode(dag.encode()) == dag
        again = pickle.loads(pickle.dumps(canvas))
        assert type(again) is type(canvas)
        assert compile(again) == dag
        if kind == "delay":
            assert dag.node(0).delay == depth
        if kind == "mixed":  # a sibling per two levels: tasks and their order survive
            assert len(dag) == 1 + depth // 2
            assert dag.task_successors(0) == (1,)

    @pytest.mark.parametrize("depth", DEPTHS)
    @pytest.mark.parametrize("kind", ["group", "graph", "group-in-chain"])
    def test_results_nested_too_deep_are_a_graph_error(self, kind: str, depth: int) -> None:
        canvas = nest(kind, depth)
        with pytest.raises(GraphError, match=f"results nest {depth} levels deep"):  # at once
            compile(canvas)
        again = pickle.loads(pickle.dumps(canvas))  # pickling still works
        assert type(again) is type(canvas)

    @pytest.mark.parametrize("kind", ["group", "graph"])
    def test_results_nested_up_to_the_limit_compile_and_round_trip(self, kind: str) -> None:
        dag = compile(Chain(nest(kind, MAX_RESULT_DEPTH), t.message(1), pipe=True))
        assert Dag.decode(dag.encode()) == dag
        with pytest.raises(GraphError, match="nest"):
            compile(nest(kind, MAX_RESULT_DEPTH + 1))

    @pytest.mark.parametrize("depth", DEPTHS)
    def test_describe_of_nested_delays_is_one_line(self, depth: int) -> None:
        with pytest.raises(GraphError, match=rf"WithDelay\(t\(\.\.\.\).*delay={depth}, {depth} "):
            WithDelay(nest("delay", depth), delay=-1)

    @pytest.mark.parametrize("depth", DEPTHS)
    def test_evaluate_a_deep_result_spec(self, depth: int) -> None:
        spec: Any = 0
        for _ in range(depth):
            spec = [spec, None]
        value = evaluate(spec, [7])
        for _ in range(depth):
            value = value[0]
        assert value == 7

    def test_the_cli_renders_a_deep_canvas(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["graph", "tests.test_hostile_canvas:deep_chain"]) == 0
        assert capsys.readouterr().out == "1 tasks, 0 joins, 0 edges\n0: t(0)\n"

    @pytest.mark.parametrize("depth", DEPTHS)
    @pytest.mark.parametrize("kind", ["chain", "group", "delay", "mixed"])
    def test_compares_hashes_and_prints(self, kind: str, depth: int) -> None:
        leaf = t.message(0)
        one, two = nest(kind, depth, leaf), nest(kind, depth, leaf)
        assert one == two
        assert one == pickle.loads(pickle.dumps(one))
        assert one != nest(kind, depth - 1, leaf)
        assert one != nest(kind, depth)  # another message at the bottom
        with pytest.raises(TypeError, match="unhashable"):  # a message's options dict
            hash(one)
        text = repr(one)
        assert text.startswith(("Chain(", "Group(", "WithDelay("))
        assert text.endswith("...)")
        assert len(text) < 5_000

    def test_equality_hash_and_repr_of_small_canvases(self) -> None:
        a, b = t.message(1), t.message(2)
        assert Chain(a, b, pipe=True) == Chain(a, b, pipe=True)
        assert Chain(a, b) != Chain(a, b, pipe=True)
        assert Chain(a, b) != Group(a, b)
        assert WithDelay(a, delay=1) != WithDelay(a, delay=2)
        assert Group(a, Chain(b)) != Group(a, Chain(a))
        g = Graph()
        assert Chain(g) == Chain(g)
        assert Chain(g) != Chain(Graph())  # a Graph equals only itself
        assert Chain() == Chain()
        assert hash(Chain()) == hash(Chain())
        assert hash(Group(Chain(), WithDelay(Group(), delay=3))) == hash(
            Group(Chain(), WithDelay(Group(), delay=3))
        )
        assert len({Chain(), Group(), Chain(pipe=True), Chain()}) == 3
        assert repr(Chain(Group(), WithDelay(Chain(), delay=5), pipe=True)) == (
            "Chain(Group(), WithDelay(Chain(), delay=5), pipe=True)"
        )
        assert repr(Chain(a)) == f"Chain({a!r})"
        assert repr(Group(g)) == "Group(Graph(0 nodes))"

    def test_shared_sub_canvases_pickle_once_and_stay_shared(self) -> None:
        inner = Group(t.message(1), t.message(2))
        canvas = Chain(inner, inner, WithDelay(inner, delay=5))
        again = pickle.loads(pickle.dumps(canvas))
        assert again.steps[0] is again.steps[1]
        assert compile(again) == compile(canvas)

    def test_a_graph_pickles_with_its_edges(self) -> None:
        g = Graph()
        x = g.add(t.message("x"))
        y = g.add(Chain(t.message("y"), t.message("z")))
        g.edge(y, x)  # backwards in add order
        again = pickle.loads(pickle.dumps(g))
        assert again.snapshot()[1] == g.snapshot()[1]
        assert compile(again) == compile(g)

    def test_a_line_of_100_000_empty_graph_steps(self) -> None:
        g = Graph()
        ref = g.add(t.message("first"))
        for _ in range(100_000):
            ref = g.add(Chain(), after=[ref])
        g.add(t.message("last"), after=[ref])
        dag = compile(g)
        assert [n.args[0] for n in dag.nodes] == ["first", "last"]
        assert dag.successors(0) == (1,)


class TestGraphsContainingThemselves:
    def test_directly(self) -> None:
        g = Graph()
        g.add(t.message(1))
        g.add(g)
        with pytest.raises(GraphError, match=r"Graph\(2 nodes\) contains itself"):
            compile(g)

    def test_through_another_graph_and_a_chain(self) -> None:
        g, h = Graph(), Graph()
        g.add(Chain(t.message(1), h))
        h.add(Group(g))
        with pytest.raises(GraphError, match="contains itself"):
            compile(Chain(g))


class TestDelays:
    @pytest.mark.parametrize(
        "delay",
        [10**20, 10**400, MAX_DELAY_MS + 1, -1, math.nan, math.inf, -math.inf, True, 1.0, "5"],
    )
    def test_a_delay_dramatiq_cannot_schedule_is_refused_at_construction(self, delay: Any) -> None:
        with pytest.raises(GraphError, match=r"delay must be an integer .* from 0 to 10000000"):
            WithDelay(t.message(1), delay=delay)

    def test_the_message_shows_a_huge_delay_shortened(self) -> None:
        with pytest.raises(GraphError) as info:
            WithDelay(t.message(1), delay=10**400)
        assert len(str(info.value)) < 250

    def test_the_largest_delay_is_accepted_and_kept(self) -> None:
        dag = compile(WithDelay(t.message(1), delay=MAX_DELAY_MS))
        assert dag.node(0).delay == MAX_DELAY_MS
        assert Dag.decode(dag.encode()).node(0).delay == MAX_DELAY_MS

    def test_nested_delays_that_add_up_beyond_the_bound_fail_at_compile(self) -> None:
        canvas = WithDelay(Chain(WithDelay(t.message(1), delay=MAX_DELAY_MS)), delay=1)
        with pytest.raises(GraphError, match=r"t\(\.\.\.\).*add up to 10000000000001 ms"):
            compile(canvas)

    def test_the_bound_keeps_an_eta_printable_by_redis_lua(self, redis_client: Redis) -> None:
        # what the release scripts do: E = tostring(now + tonumber(delay)), Lua 5.1 doubles
        script = "return tostring(tonumber(ARGV[1]) + tonumber(ARGV[2]))"
        now_ms = int(time.time() * 1000)
        eta = redis_client.eval(script, 0, now_ms, MAX_DELAY_MS)
        assert eta == str(now_ms + MAX_DELAY_MS).encode()
        beyond = redis_client.eval(script, 0, now_ms, 10**14)  # why there is a bound at all
        assert b"e+" in beyond


class TestMaxNodes:
    def test_the_default_allows_a_million_nodes(self) -> None:
        assert DEFAULT_MAX_NODES == 1_000_000
        thousand = Group(*[t.message(i) for i in range(1_000)])
        million = Group(*[thousand] * 1_000)
        assert _measure(million) == (1_000_000, 2)
        assert _measure(Group(million, t.message(0)))[0] == 1_000_001

    def test_over_the_limit_names_the_count_and_the_limit(self) -> None:
        canvas = Chain(Group(*[t.message(i) for i in range(10)]), t.message(10))
        assert len(compile(canvas, max_nodes=11)) == 11
        with pytest.raises(
            WorkflowTooLarge, match=r"11 task nodes, more than the limit of 10"
        ) as e:
            compile(canvas, max_nodes=10)
        assert (e.value.count, e.value.limit) == (11, 10)
        assert isinstance(e.value, GraphError)

    def test_over_the_default_limit(self) -> None:
        thousand = Group(*[t.message(i) for i in range(1_000)])
        with pytest.raises(WorkflowTooLarge, match="1,001,000 task nodes"):
            compile(Group(*[thousand] * 1_001))

    def test_an_exponentially_shared_canvas_is_counted_not_built(self) -> None:
        step: Step = t.message(0)
        for _ in range(100):
            step = Group(step, step)
        started = time.perf_counter()
        with pytest.raises(WorkflowTooLarge, match=f"{2**100:,} task nodes"):
            compile(step)
        assert time.perf_counter() - started < 1

    @pytest.mark.parametrize("bad", [-1, 1.5, "10", None])
    def test_a_bad_limit(self, bad: Any) -> None:
        with pytest.raises(ValueError, match="max_nodes"):
            compile(t.message(1), max_nodes=bad)
