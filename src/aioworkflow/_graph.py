"""The canvas: the values users build workflows from.

``Chain``, ``Group`` and ``WithDelay`` are frozen values; ``Graph`` is a small builder for DAGs
that nesting cannot express. Leaves are dramatiq messages, recognised by shape (this module does
not import dramatiq). Bad input raises :class:`~aioworkflow.errors.GraphError` here, at
construction, which is the earliest point the user can act on it.

Nesting is unbounded (issue 13): nothing here recurses over a canvas. ``describe`` looks at one
level; pickling, ``==``, ``hash`` and ``repr`` walk the canvas with their own stack (in
``_walk``, which knows steps only through the base classes they derive from), so a chain nested 100,000 deep pickles, copies, compares, prints and compiles.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, final, runtime_checkable

from ._walk import Walked, WalkedValue
from .errors import GraphError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

__all__ = [
    "MAX_DELAY_MS",
    "STEP_TYPES",
    "Chain",
    "Graph",
    "Group",
    "MessageLike",
    "NodeRef",
    "Step",
    "WithDelay",
    "check_delay",
    "check_step",
    "describe",
    "is_message",
]

#: The longest delay a step may carry, in milliseconds (about 317 years), summed over nested
#: ``WithDelay`` steps. A released node's ETA is ``now_ms + delay``, computed in Redis Lua,
#: whose numbers are doubles printed with ``%.14g``: only below 1e14 do they print as the
#: integer dramatiq's consumers parse. ``now_ms`` is about 1.8e12 today, so 1e13 leaves room
#: until the year 4800, and keeps every ETA far below 2**53 (exact as a double and in JSON).
MAX_DELAY_MS = 10**13


@runtime_checkable
class MessageLike(Protocol):
    """What the compiler needs of a leaf: the fields of a ``dramatiq.Message``."""

    @property
    def queue_name(self) -> str: ...
    @property
    def actor_name(self) -> str: ...
    @property
    def args(self) -> tuple[Any, ...]: ...
    @property
    def kwargs(self) -> Mapping[str, Any]: ...
    @property
    def options(self) -> Mapping[str, Any]: ...


Step: TypeAlias = "MessageLike | Chain | Group | WithDelay | Graph"


def describe(step: object) -> str:
    """A short human name for a step, used in error messages (never recursive: nested delays
    are summed into one ``WithDelay``)."""
    if isinstance(step, WithDelay):
        total, depth = 0, 0
        inner: object = step
        while isinstance(inner, WithDelay):
            total, depth, inner = total + inner.delay, depth + 1, inner.step
        nested = f", {depth} nested" if depth > 1 else ""
        return f"WithDelay({describe(inner)}, delay={total}{nested})"
    if isinstance(step, Chain | Group):
        return f"{type(step).__name__}({len(step.steps)} steps)"
    if isinstance(step, Graph):
        return f"Graph({len(step)} nodes)"
    if is_message(step):
        actor, queue = getattr(step, "actor_name", "?"), getattr(step, "queue_name", "?")
        return f"{actor}(...) on queue {queue!r}"
    return repr(step)[:80]


_FIELDS = ("queue_name", "actor_name", "args", "kwargs", "options")
_message_types: dict[type, bool] = {}


def is_message(obj: object) -> bool:
    """Whether ``obj`` has the shape of a dramatiq Message (cached per type: this is hot)."""
    known = _message_types.get(type(obj))
    if known is None:
        known = all(hasattr(obj, f) for f in _FIELDS) and not isinstance(obj, type)
        if len(_message_types) < 64:
            _message_types[type(obj)] = known
    return known and isinstance(getattr(obj, "actor_name", None), str)


def check_step(step: object, where: str) -> None:
    """Raise :class:`GraphError` naming ``where`` unless ``step`` is a step."""
    if type(step) in STEP_TYPES or is_message(step):
        return
    raise GraphError(
        f"{where}: {step!r} is not a step; expected a dramatiq Message (actor.message(...)), "
        "Chain, Group, WithDelay or Graph"
    )


def check_delay(delay: object, where: str | Callable[[], str]) -> int:
    """``delay`` if it is a delay dramatiq can schedule, else a :class:`GraphError`.

    A delay is an ``int`` (not a ``bool``) of milliseconds, ``0 <= delay <=``
    :data:`MAX_DELAY_MS`: a float, NaN or infinity would reach the workers as an ETA they
    cannot parse. ``where`` names the step in the error (a callable is only called then).
    """
    if type(delay) is not int or not 0 <= delay <= MAX_DELAY_MS:
        shown = repr(delay) if len(repr(delay)) <= 40 else f"{repr(delay)[:37]}..."
        where = where if isinstance(where, str) else where()
        raise GraphError(
            f"{where}: delay must be an integer number of milliseconds from 0 to "
            f"{MAX_DELAY_MS} (about 317 years), got {shown}"
        )
    return delay


# Kept for callers of the earlier private names (``_client`` uses ``_check_step``).
_is_message = is_message
_check_step = check_step


@final
@dataclass(frozen=True, slots=True, init=False, eq=False, repr=False)
class Chain(WalkedValue):
    """Steps that run one after another.

    Args:
        *steps: messages or nested steps, run in order.
        pipe: pass each step's result to the next step as its last positional argument.
    """

    steps: tuple[Step, ...]
    pipe: bool

    def __init__(self, *steps: Step, pipe: bool = False) -> None:
        for i, step in enumerate(steps):
            check_step(step, f"Chain step {i}")
        object.__setattr__(self, "steps", tuple(steps))
        object.__setattr__(self, "pipe", bool(pipe))

    def walk_children(self) -> tuple[object, ...]:
        """The steps, in order."""
        return self.steps

    def walk_head(self) -> tuple[Any, ...]:
        """The step count and the pipe flag."""
        return (len(self.steps), self.pipe)

    @classmethod
    def walk_build(cls, parts: list[Any], head: tuple[Any, ...]) -> Chain:
        """A Chain of ``parts``."""
        return cls(*parts, pipe=bool(head[1]))

    def walk_repr(self) -> tuple[str, str]:
        """``Chain(`` ... ``)``, with ``pipe=True`` when set."""
        return "Chain(", ", pipe=True)" if self.pipe else ")"


@final
@dataclass(frozen=True, slots=True, init=False, eq=False, repr=False)
class Group(WalkedValue):
    """Branches that run in parallel; the group ends when every branch has ended.

    Args:
        *branches: messages or nested steps. A group's result is the list of its branches'
            results in definition order.
    """

    steps: tuple[Step, ...]

    def __init__(self, *branches: Step) -> None:
        for i, step in enumerate(branches):
            check_step(step, f"Group branch {i}")
        object.__setattr__(self, "steps", tuple(branches))

    def walk_children(self) -> tuple[object, ...]:
        """The branches, in order."""
        return self.steps

    def walk_head(self) -> tuple[Any, ...]:
        """The branch count."""
        return (len(self.steps),)

    @classmethod
    def walk_build(cls, parts: list[Any], head: tuple[Any, ...]) -> Group:
        """A Group of ``parts``."""
        return cls(*parts)

    def walk_repr(self) -> tuple[str, str]:
        """``Group(`` ... ``)``."""
        return "Group(", ")"


@final
@dataclass(frozen=True, slots=True, init=False, eq=False, repr=False)
class WithDelay(WalkedValue):
    """A step whose start is delayed by ``delay`` milliseconds after it is released.

    Args:
        step: the delayed step (its first tasks carry the delay).
        delay: milliseconds, an integer from 0 to :data:`MAX_DELAY_MS` (nested delays add up,
            and their sum is held to the same bound by ``compile()``).
    """

    step: Step
    delay: int

    def __init__(self, step: Step, *, delay: int) -> None:
        check_step(step, "WithDelay")
        delay = check_delay(delay, lambda: f"WithDelay({describe(step)})")
        object.__setattr__(self, "step", step)
        object.__setattr__(self, "delay", delay)

    def walk_children(self) -> tuple[object, ...]:
        """The delayed step."""
        return (self.step,)

    def walk_head(self) -> tuple[Any, ...]:
        """The delay."""
        return (self.delay,)

    @classmethod
    def walk_build(cls, parts: list[Any], head: tuple[Any, ...]) -> WithDelay:
        """``parts[0]`` delayed by the head's delay."""
        return cls(parts[0], delay=int(head[0]))

    def walk_repr(self) -> tuple[str, str]:
        """``WithDelay(`` ... ``, delay=N)``."""
        return "WithDelay(", f", delay={self.delay})"


_graph_ids = itertools.count(1)


@final
@dataclass(frozen=True, slots=True)
class NodeRef:
    """A reference to a step added to a :class:`Graph`; pass it in ``after=`` of later adds."""

    graph: int
    index: int


@final
class Graph(Walked):
    """A DAG of steps, for dependencies that Chain and Group cannot express.

    Example::

        g = Graph()
        a = g.add(fetch.message())
        b = g.add(parse.message(), after=[a])
        c = g.add(index.message(), after=[a])
        g.add(report.message(), after=[b, c])

    A Graph is itself a step and nests in chains and groups. Its result is the list of the
    results of its sinks (steps nothing depends on) in the order they were added.
    """

    __slots__ = ("_after", "_id", "_steps")

    def __init__(self) -> None:
        self._id = next(_graph_ids)
        self._steps: list[Step] = []
        self._after: list[list[int]] = []

    def __len__(self) -> int:
        return len(self._steps)

    def _resolve(self, ref: object, what: str) -> int:
        if not isinstance(ref, NodeRef):
            raise GraphError(f"{what}: {ref!r} is not a NodeRef returned by Graph.add")
        if ref.graph != self._id:
            raise GraphError(f"{what}: node reference {ref.index} belongs to another Graph")
        if not 0 <= ref.index < len(self._steps):
            raise GraphError(f"{what}: edge to unknown node {ref.index}")
        return ref.index

    def add(self, step: Step, *, after: Iterable[NodeRef] = ()) -> NodeRef:
        """Add a step that starts once every step in ``after`` has finished.

        Returns:
            A reference for later ``after=`` lists and :meth:`edge`.

        Raises:
            GraphError: the step is not a step, or a reference is foreign or unknown.
        """
        index = len(self._steps)
        check_step(step, f"Graph node {index}")
        preds = [self._resolve(ref, f"Graph node {index} ({describe(step)})") for ref in after]
        self._steps.append(step)
        self._after.append(preds)
        return NodeRef(self._id, index)

    def edge(self, before: NodeRef, after: NodeRef) -> None:
        """Add an ordering edge: ``after`` starts only once ``before`` has finished.

        Edges may be added in any order, so a cycle is possible; ``compile()`` rejects it.
        """
        u = self._resolve(before, "Graph.edge")
        v = self._resolve(after, "Graph.edge")
        self._after[v].append(u)

    def snapshot(self) -> tuple[tuple[Step, ...], tuple[tuple[int, ...], ...]]:
        """The steps and, for each, the indices of the steps it waits for."""
        return tuple(self._steps), tuple(tuple(a) for a in self._after)

    def walk_children(self) -> tuple[object, ...]:
        """The steps, in the order they were added."""
        return tuple(self._steps)

    def walk_head(self) -> tuple[Any, ...]:
        """For each step, the indices of the steps it waits for."""
        return self.snapshot()[1]

    @classmethod
    def walk_build(cls, parts: list[Any], head: tuple[Any, ...]) -> Graph:
        """A Graph of ``parts`` with the edges of ``head``."""
        graph = cls()
        refs = [graph.add(p) for p in parts]
        afters: tuple[tuple[int, ...], ...] = head
        for v, after in enumerate(afters):
            for u in after:
                graph.edge(refs[u], refs[v])
        return graph

    def __repr__(self) -> str:
        """``Graph(N nodes)`` (a Graph compares and hashes by identity)."""
        return describe(self)


#: The composite step classes (a leaf is anything message-shaped).
STEP_TYPES = frozenset({Chain, Group, WithDelay, Graph})
