"""Walking canvases without recursion: pickling, equality, hashing and repr. Pure.

A canvas may nest 100,000 levels deep (issue 13), while pickle, ``==``, ``hash`` and
``repr`` of dataclasses recurse once per level and fail a few hundred levels down. So
``Chain``, ``Group``, ``WithDelay`` and ``Graph`` delegate them to this module, where every
walk keeps its own stack.

Pickling: a canvas pickles as one flat list. In post-order, a message stands for itself, and an
``_Op`` builds a step from the steps on top of the stack: "c" a Chain of n, "g" a Group of n,
"d" a WithDelay of delay n, "r" a Graph of n steps and their afters; "s" pushes the n-th step
built so far again, so a sub-canvas used twice is flattened once and stays shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast, final

from ._graph import STEP_TYPES, Chain, Graph, Group, Step, WithDelay, describe

__all__ = ["REPR_LIMIT", "equal", "flatten", "hash_of", "shown", "unflatten"]

#: ``repr`` of a canvas stops after about this many characters.
REPR_LIMIT = 4_000


def _children(step: object) -> tuple[object, ...]:
    if isinstance(step, WithDelay):
        return (step.step,)
    if isinstance(step, Graph):
        return step.snapshot()[0]
    return cast("Chain | Group", step).steps


def _head(step: object) -> tuple[object, ...]:
    """What identifies a composite step apart from its children."""
    if isinstance(step, Chain):
        return ("c", len(step.steps), step.pipe)
    if isinstance(step, Group):
        return ("g", len(step.steps))
    return ("d", cast("WithDelay", step).delay)


_VALUES = frozenset({Chain, Group, WithDelay})


def equal(a: Step, b: Step) -> bool:
    """Whether two canvases have the same structure and equal messages (a Graph equals only
    itself, as ever)."""
    stack: list[tuple[object, object]] = [(a, b)]
    while stack:
        x, y = stack.pop()
        if x is y:
            continue
        kind = type(x)
        if kind is not type(y):
            return False
        if kind in _VALUES:
            if _head(x) != _head(y):
                return False
            stack.extend(zip(_children(x), _children(y), strict=True))
        elif kind is Graph or x != y:
            return False
    return True


def hash_of(root: Step) -> int:
    """A hash consistent with :func:`equal` (raises ``TypeError`` for an unhashable message)."""
    tokens: list[object] = []
    stack: list[object] = [root]
    while stack:
        step = stack.pop()
        if type(step) in _VALUES:
            tokens.append(_head(step))
            stack.extend(reversed(_children(step)))
        else:
            tokens.append(step)
    return hash(tuple(tokens))


def shown(root: Step) -> str:
    """``Chain(a, Group(b, c), pipe=True)``, cut after :data:`REPR_LIMIT` characters."""
    out: list[str] = []
    size = 0
    stack: list[object] = [root]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            piece = item
        elif type(item) in _VALUES:
            if isinstance(item, WithDelay):
                piece = "WithDelay("
                stack.append(f", delay={item.delay})")
            else:
                piece = f"{type(item).__name__}("
                pipe = isinstance(item, Chain) and item.pipe
                stack.append(", pipe=True)" if pipe else ")")
            kids = _children(item)
            for i in range(len(kids) - 1, -1, -1):
                stack.append(kids[i])
                if i:
                    stack.append(", ")
        elif isinstance(item, Graph):
            piece = describe(item)
        else:
            piece = repr(item)
        out.append(piece)
        size += len(piece)
        if size > REPR_LIMIT:
            return "".join(out)[:REPR_LIMIT] + "...)"
    return "".join(out)


# -- pickling ------------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class _Op:
    kind: str
    n: int
    pipe: bool = False
    afters: tuple[tuple[int, ...], ...] = ()


def flatten(root: Step) -> list[object]:
    """``root`` as a flat post-order list of messages and build instructions."""
    out: list[object] = []
    built: dict[int, int] = {}  # id(step) -> its index among built steps
    keep: list[object] = []  # holds the flattened steps, so their ids stay theirs
    stack: list[tuple[object, bool]] = [(root, False)]
    while stack:
        step, children_done = stack.pop()
        if type(step) not in STEP_TYPES:
            out.append(step)
            continue
        if id(step) in built:
            out.append(_Op("s", built[id(step)]))
            continue
        if not children_done:
            stack.append((step, True))
            children: tuple[object, ...]
            if isinstance(step, WithDelay):
                children = (step.step,)
            elif isinstance(step, Graph):
                children = step.snapshot()[0]
            else:
                children = cast("Chain | Group", step).steps
            stack.extend((c, False) for c in reversed(children))
            continue
        if isinstance(step, Chain):
            out.append(_Op("c", len(step.steps), pipe=step.pipe))
        elif isinstance(step, Group):
            out.append(_Op("g", len(step.steps)))
        elif isinstance(step, WithDelay):
            out.append(_Op("d", step.delay))
        else:
            graph = cast("Graph", step)
            out.append(_Op("r", len(graph), afters=graph.snapshot()[1]))
        built[id(step)] = len(built)
        keep.append(step)
    return out


def unflatten(flat: list[object]) -> Step:
    """The canvas :func:`flatten` flattened (shared steps come back shared)."""
    stack: list[Any] = []
    built: list[Step] = []
    for op in flat:
        if not isinstance(op, _Op):
            stack.append(op)
            continue
        if op.kind == "s":
            stack.append(built[op.n])
            continue
        if op.kind == "d":
            step: Step = WithDelay(stack.pop(), delay=op.n)
        else:
            parts = stack[len(stack) - op.n :]
            del stack[len(stack) - op.n :]
            if op.kind == "c":
                step = Chain(*parts, pipe=op.pipe)
            elif op.kind == "g":
                step = Group(*parts)
            else:
                graph = Graph()
                refs = [graph.add(p) for p in parts]
                for v, after in enumerate(op.afters):
                    for u in after:
                        graph.edge(refs[u], refs[v])
                step = graph
        built.append(step)
        stack.append(step)
    (root,) = stack
    return cast("Step", root)
