"""Hypothesis strategies for random canvases, and the ordering a canvas defines.

A canvas is built from a drawn *shape* (nested tuples), with a unique integer label as each leaf
message's first argument. :func:`required_order` computes, straight from the canvas and
independently of the compiler, every pair ``(a, b)`` of labels such that ``a`` must finish
before ``b`` starts; :func:`required_delays` the delay each leaf must carry;
:func:`assert_runs_respect` checks a recorded execution against both (used by end-to-end tests).

Shapes::

    ("leaf", other_queue)
    ("chain", [shape, ...], pipe)
    ("group", [shape, ...])
    ("delay", ms, shape)
    ("graph", [(shape, {earlier node, ...}), ...], add_order)

A graph's nodes are added in ``add_order`` (a permutation); a dependency on a node that is not
added yet becomes a later ``Graph.edge`` call, so edges that point backwards in add order are
exercised too.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import dramatiq
from dramatiq.brokers.stub import StubBroker
from hypothesis import strategies as st

from aioworkflow import Chain, Graph, Group, WithDelay

if TYPE_CHECKING:
    from aioworkflow._dag import ResultSpec

__all__ = [
    "LeafFactory",
    "Shape",
    "assert_runs_respect",
    "build",
    "canvases",
    "evaluate",
    "required_delays",
    "required_order",
    "shapes",
    "sized_shapes",
]

_broker = StubBroker()


@dramatiq.actor(broker=_broker, actor_name="leaf")
def leaf(label: int, *piped: Any) -> None:
    """A canvas leaf (never run by these strategies)."""


@dramatiq.actor(broker=_broker, actor_name="other_leaf", queue_name="other")
def other_leaf(label: int, *piped: Any) -> None:
    """A leaf on another queue, so queues are mixed."""


Shape = Any
#: Makes the leaf message for (label, on the other queue).
LeafFactory = Callable[[int, bool], Any]


def _default_leaf(label: int, other: bool) -> Any:
    return (other_leaf if other else leaf).message(label)


def _graph_of(nodes: list[tuple[Shape, set[int]]]) -> st.SearchStrategy[Shape]:
    """A graph shape of these nodes, added in a random order."""
    return st.tuples(st.just("graph"), st.just(nodes), st.permutations(range(len(nodes))))


def shapes(max_leaves: int = 30, max_delay: int = 5_000) -> st.SearchStrategy[Shape]:
    """Random canvas shapes with at most about ``max_leaves`` leaves (most are small)."""
    leaf_shape = st.tuples(st.just("leaf"), st.booleans())

    def extend(children: st.SearchStrategy[Shape]) -> st.SearchStrategy[Shape]:
        seq = st.lists(children, min_size=0, max_size=4)
        nodes = st.lists(
            st.tuples(children, st.sets(st.integers(0, 5), max_size=3)), min_size=1, max_size=5
        )
        return st.one_of(
            st.tuples(st.just("chain"), seq, st.booleans()),
            st.tuples(st.just("group"), seq),
            st.tuples(st.just("delay"), st.integers(0, max_delay), children),
            nodes.flatmap(_graph_of),
        )

    return st.recursive(leaf_shape, extend, max_leaves=max_leaves)


@st.composite
def sized_shapes(
    draw: st.DrawFn, min_leaves: int = 10, max_leaves: int = 40, max_delay: int = 5_000
) -> Shape:
    """A shape of exactly ``n`` leaves, ``min_leaves <= n <= max_leaves``, split at random.

    :func:`shapes` draws mostly small canvases; this one keeps the size up (for end-to-end
    runs) while still mixing every kind of step, empty steps included.
    """
    n = draw(st.integers(min_leaves, max_leaves))

    def part(budget: int, delayed: bool, depth: int = 0) -> Shape:
        if budget == 0:
            return draw(st.sampled_from([("chain", [], False), ("group", [])]))
        if budget == 1 and depth > 4:
            return ("leaf", draw(st.booleans()))
        kinds = (["leaf"] if budget == 1 else []) + ["chain", "group", "graph"]
        kind = draw(st.sampled_from(kinds if delayed else [*kinds, "delay"]))
        if kind == "leaf":
            return ("leaf", draw(st.booleans()))
        if kind == "delay":
            return ("delay", draw(st.integers(0, max_delay)), part(budget, True, depth + 1))
        k = draw(st.integers(min(budget, 2), min(budget, 5)))
        cuts = sorted(draw(st.lists(st.integers(1, budget - 1), min_size=k - 1, max_size=k - 1,
                                    unique=True))) if k > 1 else []  # fmt: skip
        budgets = [b - a for a, b in itertools.pairwise([0, *cuts, budget])]
        if draw(st.integers(0, 9)) == 0:  # now and then an empty step among the parts
            budgets.insert(draw(st.integers(0, len(budgets))), 0)
        parts = [part(b, False, depth + 1) for b in budgets]
        if kind == "chain":
            return ("chain", parts, draw(st.booleans()))
        if kind == "group":
            return ("group", parts)
        nodes = [(p, draw(st.sets(st.integers(0, max(0, i - 1)), max_size=2)) if i else set())
                 for i, p in enumerate(parts)]  # fmt: skip
        return ("graph", nodes, draw(st.permutations(range(len(nodes)))))

    return part(n, False)


def build(
    shape: Shape, make_leaf: LeafFactory | None = None, labels: Iterator[int] | None = None
) -> Any:
    """The canvas of a drawn shape, leaves labelled 0, 1, 2, ... in definition order.

    Args:
        shape: a shape drawn from :func:`shapes`.
        make_leaf: builds a leaf message from its label (default: actors on a private broker).
        labels: where labels come from (default: 0, 1, 2, ...).
    """
    make = make_leaf or _default_leaf
    labels = labels if labels is not None else itertools.count()
    kind = shape[0]
    if kind == "leaf":
        return make(next(labels), shape[1])
    if kind == "chain":
        return Chain(*(build(s, make, labels) for s in shape[1]), pipe=shape[2])
    if kind == "group":
        return Group(*(build(s, make, labels) for s in shape[1]))
    if kind == "delay":
        return WithDelay(build(shape[2], make, labels), delay=shape[1])
    nodes, add_order = shape[1], shape[2]
    built = [build(sub, make, labels) for sub, _ in nodes]  # labels in definition order
    g = Graph()
    refs: dict[int, Any] = {}
    late: list[tuple[int, int]] = []
    for i in add_order:
        preds = sorted(j for j in nodes[i][1] if j < i)
        refs[i] = g.add(built[i], after=[refs[j] for j in preds if j in refs])
        late += [(j, i) for j in preds if j not in refs]
    for j, i in late:
        g.edge(refs[j], refs[i])
    return g


def canvases(
    max_leaves: int = 30, make_leaf: LeafFactory | None = None, max_delay: int = 5_000
) -> st.SearchStrategy[Any]:
    """Random nested Chain/Group/WithDelay/Graph canvases of dramatiq messages."""
    return shapes(max_leaves, max_delay).map(lambda s: build(s, make_leaf))


# -- the reference semantics -------------------------------------------------------------------


def _graph_order(preds: tuple[tuple[int, ...], ...]) -> list[int]:
    """Indices of a Graph's steps, each after all the steps it waits for (DFS post-order)."""
    order: list[int] = []
    done: set[int] = set()

    def visit(i: int) -> None:
        if i in done:
            return
        done.add(i)
        for p in preds[i]:
            visit(p)
        order.append(i)

    for i in range(len(preds)):
        visit(i)
    return order


class _Reference:
    """Walks a canvas and records the direct "finishes before" pairs and the delays."""

    def __init__(self) -> None:
        self.edges: set[tuple[int, int]] = set()
        self.leaves: list[int] = []
        self.delays: dict[int, int] = {}
        self.waits: list[int] = []

    def walk(self, canvas: Any) -> None:
        """Walk ``canvas``, then replace each wait step by delays on the steps after it."""
        self.frag(canvas)
        pending = set(self.waits)
        while pending:
            # A wait none of whose predecessors is still a wait (waits are acyclic).
            w = next(w for w in pending if not any(a in pending for a, b in self.edges if b == w))
            pending.discard(w)
            before = {a for a, b in self.edges if b == w}
            after = {b for a, b in self.edges if a == w}
            self.edges = {(a, b) for a, b in self.edges if w not in (a, b)}
            self.edges |= {(a, b) for a in before for b in after}
            for b in after:
                self.delays[b] += self.delays[w]
            del self.delays[w]

    def frag(self, step: Any) -> tuple[set[int], set[int]]:
        """(entries, exits) of a step. An empty step has neither."""
        if isinstance(step, Chain):
            entries: set[int] = set()
            cur: set[int] = set()
            for sub in step.steps:
                e, x = self.frag(sub)
                if not e:
                    continue  # an empty step is transparent
                self.edges.update((a, b) for a in cur for b in e)
                entries = entries or e
                cur = x
            return entries, cur
        if isinstance(step, Group):
            entries, exits = set(), set()
            for sub in step.steps:
                e, x = self.frag(sub)
                entries |= e
                exits |= x
            return entries, exits
        if isinstance(step, WithDelay):
            entries, exits = self.frag(step.step)
            if not entries:
                # A wait step: a stand-in (negative label) that holds the delay until
                # ``resolve_waits`` hands it to the steps after it.
                w = -1 - len(self.waits)
                self.waits.append(w)
                self.delays[w] = 0
                entries, exits = {w}, {w}
            for v in entries:
                self.delays[v] += step.delay
            return entries, exits
        if isinstance(step, Graph):
            return self.graph(step)
        label = step.args[0]
        self.leaves.append(label)
        self.delays[label] = 0
        return {label}, {label}

    def graph(self, graph: Graph) -> tuple[set[int], set[int]]:
        steps, preds = graph.snapshot()
        frags = [self.frag(sub) for sub in steps]
        waits_for: dict[int, set[int]] = {}  # what a successor of node i waits for
        entries: set[int] = set()
        for i in _graph_order(preds):
            incoming = set().union(*(waits_for[p] for p in preds[i]))
            e, x = frags[i]
            if e:
                self.edges.update((a, b) for a in incoming for b in e)
                if not incoming:
                    entries |= e
                waits_for[i] = x
            else:  # an empty node passes its predecessors' exits through
                waits_for[i] = incoming
        has_succ = {p for ps in preds for p in ps}
        exits = set().union(*(waits_for[i] for i in range(len(steps)) if i not in has_succ))
        return entries, exits


def evaluate(spec: ResultSpec, labels: list[int]) -> Any:
    """The value a compiled result spec stands for when every node returns its label.

    Iterative, so a spec nested 100,000 levels deep evaluates too.
    """
    if not isinstance(spec, list):
        return labels[spec] if isinstance(spec, int) else None
    root: list[Any] = []
    stack: list[tuple[list[ResultSpec], list[Any]]] = [(spec, root)]
    while stack:
        items, out = stack.pop()
        for item in items:
            if isinstance(item, list):
                sub: list[Any] = []
                out.append(sub)
                stack.append((item, sub))
            else:
                out.append(labels[item] if isinstance(item, int) else None)
    return root


def required_order(canvas: Any) -> tuple[list[int], set[tuple[int, int]]]:
    """All leaf labels, and the transitive "finishes before" relation between them."""
    ref = _Reference()
    ref.walk(canvas)
    succ: dict[int, set[int]] = {v: set() for v in ref.leaves}
    for a, b in ref.edges:
        succ[a].add(b)
    closure: set[tuple[int, int]] = set()
    for v in ref.leaves:
        stack, seen = list(succ[v]), set()
        while stack:
            w = stack.pop()
            if w not in seen:
                seen.add(w)
                stack.extend(succ[w])
        closure.update((v, w) for w in seen)
    return ref.leaves, closure


def required_delays(canvas: Any) -> dict[int, int]:
    """The delay (ms) each leaf carries: the sum of the ``WithDelay`` steps it is an entry of."""
    ref = _Reference()
    ref.walk(canvas)
    return ref.delays


def assert_runs_respect(
    canvas: Any,
    runs: Iterable[tuple[Any, float, float]],
    *,
    started_at: float | None = None,
    delay_slack: float = 0.005,
) -> None:
    """Check a recorded execution: each leaf ran exactly once, never before its predecessors.

    Args:
        canvas: the canvas that ran.
        runs: ``(label, start, end)`` per execution, in seconds of one monotonic clock.
        started_at: when the workflow was submitted; with it, delays are checked too: a leaf
            with delay ``d`` starts at least ``d`` after its last predecessor finished (or after
            ``started_at`` if it has none).
        delay_slack: clock granularity tolerated in the delay check, in seconds.
    """
    leaves, order = required_order(canvas)
    runs = list(runs)
    ran = sorted(label for label, _, _ in runs)
    assert ran == sorted(leaves), f"ran {ran}, expected each of {sorted(leaves)} exactly once"
    times = {label: (start, end) for label, start, end in runs}
    for a, b in sorted(order):
        assert times[a][1] <= times[b][0], f"{b} started before {a} finished"
    if started_at is None:
        return
    preds: dict[int, list[int]] = {v: [] for v in leaves}
    for a, b in order:
        preds[b].append(a)
    for v, delay in required_delays(canvas).items():
        released = max((times[p][1] for p in preds[v]), default=started_at)
        assert times[v][0] - released >= delay / 1000 - delay_slack, (
            f"{v} started {times[v][0] - released:.3f} s after its release, delay is {delay} ms"
        )
