"""The canvas: the values users build workflows from.

``Chain``, ``Group`` and ``WithDelay`` are frozen values; ``Graph`` is a small builder for DAGs
that nesting cannot express. Leaves are dramatiq messages, recognised by shape (this module does
not import dramatiq). Bad input raises :class:`~aioworkflow.errors.GraphError` here, at
construction, which is the earliest point the user can act on it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, final, runtime_checkable

from .errors import GraphError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = ["Chain", "Graph", "Group", "MessageLike", "NodeRef", "Step", "WithDelay", "describe"]


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
    """A short human name for a step, used in error messages."""
    if isinstance(step, Chain | Group):
        return f"{type(step).__name__}({len(step.steps)} steps)"
    if isinstance(step, WithDelay):
        return f"WithDelay({describe(step.step)}, delay={step.delay})"
    if isinstance(step, Graph):
        return f"Graph({len(step)} nodes)"
    if _is_message(step):
        actor, queue = getattr(step, "actor_name", "?"), getattr(step, "queue_name", "?")
        return f"{actor}(...) on queue {queue!r}"
    return repr(step)[:80]


_FIELDS = ("queue_name", "actor_name", "args", "kwargs", "options")
_message_types: dict[type, bool] = {}


def _is_message(obj: object) -> bool:
    """Whether ``obj`` has the shape of a dramatiq Message (cached per type: this is hot)."""
    known = _message_types.get(type(obj))
    if known is None:
        known = all(hasattr(obj, f) for f in _FIELDS) and not isinstance(obj, type)
        if len(_message_types) < 64:
            _message_types[type(obj)] = known
    return known and isinstance(obj.actor_name, str)  # type: ignore[attr-defined]


def _check_step(step: object, where: str) -> None:
    if type(step) in _STEP_TYPES or _is_message(step):
        return
    raise GraphError(
        f"{where}: {step!r} is not a step; expected a dramatiq Message (actor.message(...)), "
        "Chain, Group, WithDelay or Graph"
    )


@final
@dataclass(frozen=True, slots=True, init=False)
class Chain:
    """Steps that run one after another.

    Args:
        *steps: messages or nested steps, run in order.
        pipe: pass each step's result to the next step as its last positional argument.
    """

    steps: tuple[Step, ...]
    pipe: bool

    def __init__(self, *steps: Step, pipe: bool = False) -> None:
        for i, step in enumerate(steps):
            _check_step(step, f"Chain step {i}")
        object.__setattr__(self, "steps", tuple(steps))
        object.__setattr__(self, "pipe", bool(pipe))


@final
@dataclass(frozen=True, slots=True, init=False)
class Group:
    """Branches that run in parallel; the group ends when every branch has ended.

    Args:
        *branches: messages or nested steps. A group's result is the list of its branches'
            results in definition order.
    """

    steps: tuple[Step, ...]

    def __init__(self, *branches: Step) -> None:
        for i, step in enumerate(branches):
            _check_step(step, f"Group branch {i}")
        object.__setattr__(self, "steps", tuple(branches))


@final
@dataclass(frozen=True, slots=True, init=False)
class WithDelay:
    """A step whose start is delayed by ``delay`` milliseconds after it is released.

    Args:
        step: the delayed step (its first tasks carry the delay).
        delay: milliseconds, a non-negative integer.
    """

    step: Step
    delay: int

    def __init__(self, step: Step, *, delay: int) -> None:
        _check_step(step, "WithDelay")
        if isinstance(delay, bool) or not isinstance(delay, int) or delay < 0:  # type: ignore[redundant-expr]  # runtime check of untyped input
            raise GraphError(
                f"WithDelay({describe(step)}): delay must be a non-negative integer number of "
                f"milliseconds, got {delay!r}"
            )
        object.__setattr__(self, "step", step)
        object.__setattr__(self, "delay", delay)


_graph_ids = itertools.count(1)


_STEP_TYPES: frozenset[type] = frozenset()  # filled in below, once the classes exist


@final
@dataclass(frozen=True, slots=True)
class NodeRef:
    """A reference to a step added to a :class:`Graph`; pass it in ``after=`` of later adds."""

    graph: int
    index: int


@final
class Graph:
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
        _check_step(step, f"Graph node {index}")
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


_STEP_TYPES = frozenset({Chain, Group, WithDelay, Graph})
