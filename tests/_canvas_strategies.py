"""Hypothesis strategies for random canvases, and the ordering a canvas defines.

A canvas is built from a drawn shape (nested tuples), with a unique integer label as each leaf
message's first argument. :func:`required_order` computes, straight from the canvas and
independently of the compiler, every pair ``(a, b)`` of labels such that ``a`` must finish
before ``b`` starts.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import dramatiq
from dramatiq.brokers.stub import StubBroker
from hypothesis import strategies as st

from aioworkflow import Chain, Graph, Group, WithDelay

if TYPE_CHECKING:
    import random

_broker = StubBroker()


@dramatiq.actor(broker=_broker, actor_name="leaf")
def leaf(label: int, *piped: Any) -> None:
    """A canvas leaf (never run by these strategies)."""


@dramatiq.actor(broker=_broker, actor_name="other_leaf", queue_name="other")
def other_leaf(label: int, *piped: Any) -> None:
    """A leaf on another queue, so queues are mixed."""


Shape = Any  # ("leaf", queue) | ("chain"|"group", [shapes]) | ("delay", ms, shape) | ("graph", ...)


def _shapes(max_leaves: int) -> st.SearchStrategy[Shape]:
    leaf_shape = st.tuples(st.just("leaf"), st.booleans())

    def extend(children: st.SearchStrategy[Shape]) -> st.SearchStrategy[Shape]:
        seq = st.lists(children, min_size=0, max_size=4)
        graph = st.lists(
            st.tuples(children, st.sets(st.integers(0, 5), max_size=3)), min_size=1, max_size=5
        )
        return st.one_of(
            st.tuples(st.just("chain"), seq),
            st.tuples(st.just("group"), seq),
            st.tuples(st.just("delay"), st.integers(0, 5_000), children),
            st.tuples(st.just("graph"), graph),
        )

    return st.recursive(leaf_shape, extend, max_leaves=max_leaves)


def build(shape: Shape, labels: itertools.count[int] | None = None, leaf_actor: Any = None) -> Any:
    """The canvas of a drawn shape, leaves labelled 0, 1, 2, ... in definition order.

    Leaves are messages of ``leaf_actor`` if given (to run them), else of two stub actors.
    """
    labels = labels if labels is not None else itertools.count()
    kind = shape[0]
    if kind == "leaf":
        if leaf_actor is not None:
            return leaf_actor.message(next(labels))
        return (other_leaf if shape[1] else leaf).message(next(labels))
    if kind == "chain":
        return Chain(*(build(s, labels, leaf_actor) for s in shape[1]))
    if kind == "group":
        return Group(*(build(s, labels, leaf_actor) for s in shape[1]))
    if kind == "delay":
        return WithDelay(build(shape[2], labels, leaf_actor), delay=shape[1])
    g = Graph()
    refs: list[Any] = []
    for i, (sub, after) in enumerate(shape[1]):
        preds = [refs[j] for j in sorted(after) if j < i]
        refs.append(g.add(build(sub, labels, leaf_actor), after=preds))
    return g


def canvases(max_leaves: int = 30) -> st.SearchStrategy[Any]:
    """Random nested Chain/Group/WithDelay/Graph canvases of dramatiq messages."""
    return _shapes(max_leaves).map(build)


# -- the reference ordering ------------------------------------------------------------------


def _frag(step: Any, edges: set[tuple[int, int]], leaves: list[int]) -> tuple[set[int], set[int]]:
    """(entries, exits) of a step; adds its inner edges. Empty steps have no entries/exits."""
    if isinstance(step, Chain):
        entries: set[int] = set()
        cur: set[int] = set()
        for sub in step.steps:
            e, x = _frag(sub, edges, leaves)
            if not e:
                continue
            edges.update((a, b) for a in cur for b in e)
            if not entries and not cur:
                entries = e
            cur = x
        return entries, cur
    if isinstance(step, Group):
        entries, exits = set(), set()
        for sub in step.steps:
            e, x = _frag(sub, edges, leaves)
            entries |= e
            exits |= x
        return entries, exits
    if isinstance(step, WithDelay):
        return _frag(step.step, edges, leaves)
    if isinstance(step, Graph):
        steps, preds = step.snapshot()
        outs: list[set[int]] = []  # what a successor of each node must wait for
        has_succ = [False] * len(steps)
        entries = set()
        for i, sub in enumerate(steps):
            incoming: set[int] = set()
            for p in preds[i]:
                incoming |= outs[p]
                has_succ[p] = True
            e, x = _frag(sub, edges, leaves)
            if e:
                edges.update((a, b) for a in incoming for b in e)
                if not preds[i] or not incoming:
                    entries |= e
                outs.append(x)
            else:  # an empty node passes its predecessors' ordering through
                outs.append(incoming)
        exits = set().union(*(outs[i] for i in range(len(steps)) if not has_succ[i]))
        return entries, exits
    label = step.args[0]
    leaves.append(label)
    return {label}, {label}


def required_order(canvas: Any) -> tuple[list[int], set[tuple[int, int]]]:
    """All leaf labels in definition order, and the transitive "finishes before" relation."""
    edges: set[tuple[int, int]] = set()
    leaves: list[int] = []
    _frag(canvas, edges, leaves)
    succ: dict[int, set[int]] = {v: set() for v in leaves}
    for a, b in edges:
        succ[a].add(b)
    closure: set[tuple[int, int]] = set()
    for v in leaves:
        stack, seen = list(succ[v]), set()
        while stack:
            w = stack.pop()
            if w not in seen:
                seen.add(w)
                stack.extend(succ[w])
        closure.update((v, w) for w in seen)
    return leaves, closure


def random_shape(rng: random.Random, leaves: int) -> Shape:
    """A random shape with about ``leaves`` leaves, from a seeded generator (no hypothesis)."""
    if leaves <= 1:
        return ("leaf", rng.random() < 0.2)
    kind = rng.choice(["chain", "group", "group", "chain", "graph", "delay"])
    if kind == "delay":
        return ("delay", rng.choice([0, 10, 50]), random_shape(rng, leaves))
    k = min(leaves, rng.randint(2, 5))
    shares = [leaves // k + (1 if i < leaves % k else 0) for i in range(k)]
    subs = [random_shape(rng, s) for s in shares]
    if kind == "graph":
        return ("graph", [(sub, set(rng.sample(range(i), min(i, rng.randint(0, 2)))))
                          for i, sub in enumerate(subs)])  # fmt: skip
    return (kind, subs)
