"""The graph compiler: reachability equals the canvas's ordering, compactness, typed errors."""

from __future__ import annotations

import math
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from hypothesis import HealthCheck, event, given, settings, strategies as st

from aioworkflow import Chain, Dag, Graph, Group, NodeRef, WithDelay, compile
from aioworkflow._codec import pack, unpack
from aioworkflow.errors import DecodeError, GraphError
from tests._canvas_strategies import (
    build,
    canvases,
    required_delays,
    required_order,
    sized_shapes,
)

_broker = StubBroker()


@dramatiq.actor(broker=_broker)
def t(label: Any, *piped: Any, **kw: Any) -> None:
    """A task for canvases (never run here)."""


@dramatiq.actor(broker=_broker, queue_name="slow", max_retries=7)
def q(label: Any) -> None:
    """A task on another queue, with options."""


def reachability(dag: Dag) -> set[tuple[Any, Any]]:
    """Pairs of task labels (a, b) with a path a -> b in the compiled DAG (through joins)."""
    n = len(dag)
    out: set[tuple[Any, Any]] = set()
    for i in range(n):
        stack, seen = list(dag.successors(i)), set()
        while stack:
            v = stack.pop()
            if v in seen:
                continue
            seen.add(v)
            stack.extend(dag.successors(v))
        out.update((dag.node(i).args[0], dag.node(j).args[0]) for j in seen if j < n)
    return out


class TestSemantics:
    @settings(max_examples=300, deadline=None)
    @given(canvases())
    def test_reachability_is_exactly_the_canvas_order(self, canvas: Any) -> None:
        dag = compile(canvas)
        leaves, order = required_order(canvas)
        assert sorted(n.args[0] for n in dag.nodes) == sorted(leaves)  # one node per leaf
        assert reachability(dag) == order

    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(sized_shapes(min_leaves=20, max_leaves=120))
    def test_reachability_and_delays_of_larger_canvases(self, shape: Any) -> None:
        canvas = build(shape)
        dag = compile(canvas)
        leaves, order = required_order(canvas)
        assert sorted(n.args[0] for n in dag.nodes) == sorted(leaves)
        assert reachability(dag) == order
        assert {n.args[0]: n.delay for n in dag.nodes} == required_delays(canvas)
        assert Dag.decode(dag.encode()) == dag

    @settings(max_examples=200, deadline=None)
    @given(canvases())
    def test_each_node_keeps_the_delay_of_the_steps_it_starts(self, canvas: Any) -> None:
        dag = compile(canvas)
        assert {n.args[0]: n.delay for n in dag.nodes} == required_delays(canvas)

    @settings(max_examples=200, deadline=None)
    @given(canvases())
    def test_structure_is_consistent_and_round_trips(self, canvas: Any) -> None:
        dag = compile(canvas)
        indegree = [0] * dag.size
        for v in range(dag.size):
            for w in dag.successors(v):
                assert w > v or dag.is_join(w) or dag.is_join(v), "edges follow topological order"
                indegree[w] += 1
        assert [dag.predecessor_count(v) for v in range(dag.size)] == indegree
        for i in range(len(dag)):  # task nodes are in topological order, through joins too
            assert all(j > i for j in dag.task_successors(i)), "nodes in topological order"
        assert all(indegree[v] > 0 and dag.successors(v) for v in range(len(dag), dag.size))
        assert set(dag.roots) == {v for v in range(len(dag)) if indegree[v] == 0}
        assert dag.edge_count == sum(indegree)
        assert Dag.decode(dag.encode()) == dag
        assert compile(canvas).encode() == dag.encode()  # deterministic

    @settings(max_examples=100, deadline=None)
    @given(st.integers(1, 300), st.integers(1, 300), st.integers(1, 6))
    def test_group_after_group_costs_linear_edges(self, n: int, m: int, stages: int) -> None:
        two = compile(Chain(Group(*map(t.message, range(n))), Group(*map(t.message, range(m)))))
        assert two.edge_count <= n + m
        groups = [Group(*[t.message((s, i)) for i in range(n)]) for s in range(stages)]
        many = compile(Chain(*groups))
        assert many.edge_count <= 2 * n * stages

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(st.sampled_from(["leaf", "empty", "group"]), min_size=1, max_size=6),
        st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), max_size=8),
    )
    def test_graph_edges_in_any_direction_compile_iff_acyclic(
        self, kinds: list[str], pairs: list[tuple[int, int]]
    ) -> None:
        def make(kind: str, i: int) -> Any:
            if kind == "leaf":
                return t.message(i)
            return Chain() if kind == "empty" else Group(t.message(i), t.message(100 + i))

        g = Graph()
        refs = [g.add(make(kind, i)) for i, kind in enumerate(kinds)]
        edges = {(a, b) for a, b in pairs if a < len(kinds) and b < len(kinds)}
        for a, b in sorted(edges):
            g.edge(refs[a], refs[b])
        # reference: a step graph has a cycle iff repeatedly removing sources leaves a vertex
        alive = set(range(len(kinds)))
        while sources := {v for v in alive if not any(b == v and a in alive for a, b in edges)}:
            alive -= sources
        event("cyclic" if alive else "acyclic")
        if alive:
            with pytest.raises(GraphError, match="cycle"):
                compile(g)
        else:
            assert reachability(compile(g)) == required_order(g)[1]

    def test_topological_order_of_nodes(self) -> None:
        g = Graph()
        a = g.add(t.message("a"))
        b = g.add(t.message("b"))
        g.edge(b, a)  # a after b, although added first
        dag = compile(g)
        assert [n.args[0] for n in dag.nodes] == ["b", "a"]


class TestSeedExample:
    def test_dramatiq_workflow_readme_example(self) -> None:
        canvas = Chain(
            t.message(1),
            Group(
                Chain(t.message(2), t.message(5)),
                t.message(3),
                Chain(t.message(4), Group(t.message(6), t.message(7))),
            ),
            t.message(8),
        )
        dag = compile(canvas)
        assert len(dag) == 8
        assert [dag.node(r).args[0] for r in dag.roots] == [1]
        expected = {(1, x) for x in range(2, 9)}
        expected |= {(2, 5), (2, 8), (5, 8), (3, 8), (4, 6), (4, 7), (4, 8), (6, 8), (7, 8)}
        assert reachability(dag) == expected
        assert reachability(dag) == required_order(canvas)[1]


class TestKeepsWhatUsersGave:
    def test_queue_options_args_kwargs_and_delays_are_kept(self) -> None:
        m = q.message_with_options(args=("x",), kwargs={"k": [1, 2]}, max_retries=3)
        dag = compile(Chain(WithDelay(m, delay=250), t.message("y", key="v")))
        first, second = dag.nodes
        assert (first.actor_name, first.queue_name, first.args) == ("q", "slow", ("x",))
        assert first.kwargs == {"k": [1, 2]}
        assert first.options["max_retries"] == 3
        assert first.delay == 250
        assert (second.delay, second.kwargs, second.queue_name) == (0, {"key": "v"}, "default")

    def test_per_delivery_options_are_dropped_and_shapes_shared(self) -> None:
        delivered = t.message_with_options(
            args=(1,), eta=123, retries=2, redis_message_id="r", traceback="tb", time_limit=5
        )
        dag = compile(Group(delivered, t.message_with_options(args=(2,), time_limit=5)))
        assert [n.options for n in dag.nodes] == [{"time_limit": 5}, {"time_limit": 5}]
        assert len(dag.shapes) == 1  # same actor, queue and options: stored once

    def test_a_delay_applies_to_the_first_tasks_of_its_step(self) -> None:
        dag = compile(WithDelay(Chain(Group(t.message(1), t.message(2)), t.message(3)), delay=9))
        assert {n.args[0]: n.delay for n in dag.nodes} == {1: 9, 2: 9, 3: 0}

    def test_empty_chains_and_groups_are_valid(self) -> None:
        assert len(compile(Chain())) == 0
        assert len(compile(Group())) == 0
        dag = compile(Chain(t.message(1), Group(), Chain(), t.message(2)))
        assert reachability(dag) == {(1, 2)}

    def test_pipe_targets_name_the_previous_steps_result(self) -> None:
        canvas = Chain(t.message("a"), Group(t.message("b"), t.message("c")), t.message("d"))
        dag = compile(Chain(*canvas.steps, pipe=True))
        index = {n.args[0]: i for i, n in enumerate(dag.nodes)}
        pipes = {n.args[0]: n.pipe for n in dag.nodes}
        assert pipes == {"a": None, "b": index["a"], "c": index["a"], "d": [index["b"], index["c"]]}
        assert all(n.pipe is None for n in compile(canvas).nodes)

    def test_shared_strings_are_stored_once(self) -> None:
        one = len(compile(Group(*[t.message(i) for i in range(10)])).encode(ids=False))
        dag = compile(Group(*[t.message(i) for i in range(10_000)]))
        many = len(dag.encode(ids=False))
        assert many / 10_000 < 20  # bytes per node: actor, queue and options are not repeated
        assert one < 400
        # the message id column (ready mode): each uuid in its 16 bytes, base64
        assert (len(dag.encode()) - many) / 10_000 < 22


class TestGraphErrors:
    def test_a_leaf_that_is_not_a_message(self) -> None:
        with pytest.raises(GraphError, match=r"Chain step 1.*'oops'"):
            Chain(t.message(1), "oops")  # type: ignore[arg-type]
        with pytest.raises(GraphError, match=r"Group branch 0.*42"):
            Group(42)  # type: ignore[arg-type]
        with pytest.raises(GraphError, match="not a step"):
            Graph().add(object())  # type: ignore[arg-type]

    def test_a_cycle_names_its_nodes(self) -> None:
        g = Graph()
        a = g.add(t.message("a"))
        b = g.add(t.message("b"), after=[a])
        g.edge(b, a)
        with pytest.raises(GraphError, match=r"cycle through 2 steps.*t\(\.\.\.\) on queue"):
            compile(g)

    def test_a_cycle_through_empty_steps(self) -> None:
        g = Graph()
        a = g.add(t.message("a"))
        e1 = g.add(Chain(), after=[a])
        e2 = g.add(Group(), after=[e1])
        g.edge(e2, e1)
        with pytest.raises(GraphError, match=r"cycle through empty step \d \((Chain|Group)\(0"):
            compile(g)

    def test_a_self_edge(self) -> None:
        g = Graph()
        a = g.add(q.message("a"))
        g.edge(a, a)
        with pytest.raises(GraphError, match=r"cycle.*q\(\.\.\.\) on queue 'slow'"):
            compile(g)

    def test_an_edge_to_an_unknown_node_or_a_foreign_ref(self) -> None:
        g, other = Graph(), Graph()
        a = g.add(t.message("a"))
        foreign = other.add(t.message("x"))
        other.add(t.message("y"))
        with pytest.raises(GraphError, match="another Graph"):
            g.add(t.message("b"), after=[foreign])
        with pytest.raises(GraphError, match="NodeRef"):
            g.add(t.message("b"), after=["a"])  # type: ignore[list-item]
        with pytest.raises(GraphError, match=r"Graph.edge: node reference 0 belongs to another"):
            g.edge(a, foreign)
        with pytest.raises(GraphError, match=r"Graph node 1 \(q\(\.\.\.\).*unknown node 5"):
            g.add(q.message("b"), after=[NodeRef(a.graph, 5)])
        with pytest.raises(GraphError, match=r"Graph.edge: edge to unknown node 1"):
            g.edge(NodeRef(a.graph, 1), a)
        assert len(g) == 1  # nothing was added by the failed calls

    @pytest.mark.parametrize("delay", [-1, 1.5, "10", True, None])
    def test_a_bad_delay(self, delay: Any) -> None:
        with pytest.raises(GraphError, match=r"WithDelay\(t\(\.\.\.\).*delay"):
            WithDelay(t.message(1), delay=delay)

    @pytest.mark.parametrize("bad", [object(), {1, 2}, b"\xff", 2**70, math.nan, -math.inf])
    def test_an_argument_orjson_cannot_encode_is_reported_at_compile_time(self, bad: Any) -> None:
        with pytest.raises(GraphError, match=r"t\(\.\.\.\)"):
            compile(Chain(t.message(1), Group(t.message(bad))))
        with pytest.raises(GraphError, match=r"q\(\.\.\.\) on queue 'slow'.*JSON"):
            compile(Chain(t.message(1), q.message_with_options(args=(1,), kwargs={"k": bad})))

    def test_a_value_at_orjsons_depth_limit_is_a_graph_error(self) -> None:
        def nested(depth: int) -> Any:
            value: Any = 0
            for _ in range(depth):
                value = [value]
            return value

        # 252 levels encode alone, but not inside the compiler's columns (one level more)
        with pytest.raises(GraphError, match="cannot be encoded as JSON together"):
            compile(t.message(nested(252)))
        with pytest.raises(GraphError, match=r"t\(\.\.\.\).*cannot be encoded as JSON"):
            compile(t.message(nested(253)))
        assert compile(t.message(nested(251))).node(0).args == (nested(251),)

    def test_none_and_finite_floats_are_fine(self) -> None:
        dag = compile(Group(t.message(None, 1.5), t.message(0, k=[None, 1e300])))
        assert [(n.args, n.kwargs) for n in dag.nodes] == [
            ((None, 1.5), {}),
            ((0,), {"k": [None, 1e300]}),
        ]


class TestDecodeErrors:
    def blob(self) -> bytes:
        return compile(Chain(t.message(1), Group(t.message(2), t.message(3)))).encode()

    def test_truncated(self) -> None:
        data = self.blob()
        for cut in (0, 1, 3, len(data) // 2, len(data) - 1):
            with pytest.raises(DecodeError):
                Dag.decode(data[:cut])

    def test_corrupt_bytes(self) -> None:
        data = bytearray(self.blob())
        data[len(data) // 2] ^= 0xFF
        with pytest.raises(DecodeError):
            Dag.decode(bytes(data))

    def test_wrong_magic_and_unknown_version(self) -> None:
        data = self.blob()
        with pytest.raises(DecodeError, match="magic"):
            Dag.decode(b"{}" + data[2:])
        with pytest.raises(DecodeError, match="version"):
            Dag.decode(data[:2] + bytes([99]) + data[3:])

    @pytest.mark.parametrize(
        "doc",
        [
            {},
            [1, 2, 3],
            {"v": 1},
            "text",
        ],
    )
    def test_a_valid_blob_with_an_invalid_document(self, doc: Any) -> None:
        with pytest.raises(DecodeError):
            Dag.decode(pack(doc))

    @pytest.mark.parametrize(
        ("key", "value"),
        [
            ("sh", [["t", "default"]]),  # a shape is (actor, queue, options)
            ("sh", "t"),
            ("s", [0, 0, 9]),  # shape index out of range
            ("a", [[1], [2], 3]),  # args entry not a list
            ("k", [[0, 5]]),  # kwargs entry not an object
            ("k", [[7, {}]]),  # kwargs of an unknown node
            ("d", [[0, -5]]),  # negative delay
            ("d", [[0, 1.5]]),
            ("p", [[1, 99]]),  # pipe from an unknown node
            ("j", -1),
            ("j", "0"),
            ("o", [0, 2, 1, 2]),  # offsets not monotonic
            ("r", [0, "x"]),
        ],
    )
    def test_a_structurally_invalid_field(self, key: str, value: Any) -> None:
        doc = unpack(self.blob())
        assert isinstance(doc, dict)
        assert Dag.decode(pack(doc)) == Dag.decode(self.blob())  # the unmodified doc is valid
        with pytest.raises(DecodeError, match="malformed DAG blob"):
            Dag.decode(pack({**doc, key: value}))
        missing = {k: v for k, v in doc.items() if k != key}
        with pytest.raises(DecodeError, match="malformed DAG blob"):
            Dag.decode(pack(missing))

    def test_a_cycle_or_a_join_without_predecessors(self) -> None:
        doc = unpack(self.blob())  # 0 -> 1, 0 -> 2
        assert isinstance(doc, dict)
        assert (doc["o"], doc["t"], doc["j"]) == ([0, 2, 2, 2], [1, 2], 0)
        with pytest.raises(DecodeError, match="cycle"):  # 0 -> 1 -> 0
            Dag.decode(pack({**doc, "o": [0, 2, 3, 3], "t": [1, 2, 0]}))
        with pytest.raises(DecodeError, match="cycle"):  # 2 -> 2
            Dag.decode(pack({**doc, "o": [0, 2, 2, 3], "t": [1, 2, 2]}))
        with pytest.raises(DecodeError, match="join node without predecessors"):
            Dag.decode(pack({**doc, "j": 1, "o": [0, 1, 1, 1, 2], "t": [1, 2]}))
        # a join with a predecessor is fine: 0 -> J -> {1, 2}
        dag = Dag.decode(pack({**doc, "j": 1, "o": [0, 1, 1, 1, 3], "t": [3, 1, 2]}))
        assert dag.task_successors(0) == (1, 2)
        assert [dag.predecessor_count(v) for v in range(dag.size)] == [0, 1, 1, 1]

    def test_a_document_with_out_of_range_successors(self) -> None:
        doc = unpack(self.blob())
        assert isinstance(doc, dict)
        # every structural field is checked: corrupt each integer list in turn
        corrupted = 0
        for key, value in doc.items():
            if isinstance(value, list) and value and all(isinstance(x, int) for x in value):
                with pytest.raises(DecodeError):
                    Dag.decode(pack(dict(doc, **{key: [10**6 for _ in value]})))
                if key != "r":  # a shorter result spec is still a valid one
                    with pytest.raises(DecodeError):
                        Dag.decode(pack(dict(doc, **{key: value[:-1]})))
                corrupted += 1
        assert corrupted >= 3  # node shapes, CSR offsets and targets at least
