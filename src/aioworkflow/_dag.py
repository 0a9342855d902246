"""The compiled workflow: an indexed DAG in CSR form, and its blob encoding. Pure.

Vertices ``0 .. len(dag)-1`` are task nodes (one dramatiq message each) in a topological order;
vertices ``len(dag) .. dag.size-1`` are virtual join nodes, which carry no message and exist only
so that a group feeding a group costs N+M edges instead of N*M. ``successors(v)`` may name join
vertices; ``task_successors(v)`` looks through them.

Columns are stored once per distinct value where values repeat: a *shape* is an
(actor, queue, options) triple, and each node points at its shape, so a 100,000-member group of
one actor stores its actor name, queue and options once.

A result spec (``ResultSpec``) describes where a step's result comes from: an ``int`` is a task
node's own result, a list is a list of specs (a group), ``None`` is no value (an empty chain).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias, final

from . import _codec
from .errors import DecodeError

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["Dag", "Node", "ResultSpec", "spec_nodes"]

ResultSpec: TypeAlias = "int | list[ResultSpec] | None"


class Node(NamedTuple):
    """One task node of a compiled workflow (a dramatiq message, without broker bookkeeping)."""

    actor_name: str
    queue_name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    #: Milliseconds between the node's release and its start (``WithDelay``).
    delay: int
    #: Where the piped input comes from (``Chain(pipe=True)``), or None. None is ambiguous: a
    #: node in ``Dag.pipes`` whose previous step was empty gets ``None`` as its piped argument.
    pipe: ResultSpec


def spec_nodes(spec: ResultSpec) -> list[int]:
    """The task nodes a result spec reads, in order (duplicates kept)."""
    out: list[int] = []
    stack: list[ResultSpec] = [spec]
    while stack:
        item = stack.pop()
        if isinstance(item, int):
            out.append(item)
        elif isinstance(item, list):
            stack.extend(reversed(item))
    return out


@final
@dataclass(frozen=True, slots=True, kw_only=True, eq=True)
class Dag:
    """A compiled workflow. Build it with :func:`aioworkflow.compile`."""

    shapes: tuple[tuple[str, str, dict[str, Any]], ...]
    shape_of: tuple[int, ...]
    args: tuple[tuple[Any, ...], ...]
    kwargs: dict[int, dict[str, Any]]
    delays: dict[int, int]
    pipes: dict[int, ResultSpec]
    n_joins: int
    offsets: tuple[int, ...]
    targets: tuple[int, ...]
    result: ResultSpec
    pred_counts: tuple[int, ...] = field(compare=False, default=())

    def __post_init__(self) -> None:
        if not self.pred_counts:
            counts = [0] * self.size
            for t in self.targets:
                counts[t] += 1
            object.__setattr__(self, "pred_counts", tuple(counts))

    # -- shape -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.shape_of)

    @property
    def size(self) -> int:
        """Number of vertices: task nodes plus join nodes."""
        return len(self.shape_of) + self.n_joins

    @property
    def edge_count(self) -> int:
        """Number of edges, join edges included."""
        return len(self.targets)

    @property
    def roots(self) -> tuple[int, ...]:
        """Task nodes with no predecessor: they start when the workflow starts."""
        return tuple(i for i in range(len(self)) if self.pred_counts[i] == 0)

    @property
    def queues(self) -> tuple[str, ...]:
        """Distinct queue names, in order of first use."""
        return tuple(dict.fromkeys(q for _, q, _ in self.shapes))

    def is_join(self, v: int) -> bool:
        """Whether vertex ``v`` is a virtual join node."""
        return v >= len(self.shape_of)

    def successors(self, v: int) -> tuple[int, ...]:
        """Direct successors of vertex ``v`` (may include join vertices)."""
        return self.targets[self.offsets[v] : self.offsets[v + 1]]

    def predecessor_count(self, v: int) -> int:
        """In-degree of vertex ``v``."""
        return self.pred_counts[v]

    def task_successors(self, v: int) -> tuple[int, ...]:
        """Task nodes that directly wait for ``v``, looking through join nodes."""
        out: dict[int, None] = {}
        stack = list(reversed(self.successors(v)))
        while stack:
            w = stack.pop()
            if self.is_join(w):
                stack.extend(reversed(self.successors(w)))
            else:
                out[w] = None
        return tuple(out)

    def node(self, i: int) -> Node:
        """Task node ``i``."""
        actor, queue, options = self.shapes[self.shape_of[i]]
        return Node(
            actor,
            queue,
            self.args[i],
            self.kwargs.get(i, {}),
            options,
            self.delays.get(i, 0),
            self.pipes.get(i),
        )

    @property
    def nodes(self) -> tuple[Node, ...]:
        """All task nodes in topological order."""
        return tuple(self.node(i) for i in range(len(self)))

    def __iter__(self) -> Iterator[Node]:
        return (self.node(i) for i in range(len(self)))

    def keep_results(self) -> frozenset[int]:
        """Task nodes whose results a successor (pipe) or the caller (workflow result) needs."""
        keep = set(spec_nodes(self.result))
        for spec in self.pipes.values():
            keep.update(spec_nodes(spec))
        return frozenset(keep)

    # -- encoding --------------------------------------------------------------------------
    def encode(self) -> bytes:
        """The blob stored once per workflow (orjson + lz4 frame, versioned header)."""
        doc = {
            "sh": [list(s) for s in self.shapes],
            "s": self.shape_of,
            "a": self.args,
            "k": sorted(self.kwargs.items()),
            "d": sorted(self.delays.items()),
            "p": sorted(self.pipes.items(), key=lambda kv: kv[0]),
            "j": self.n_joins,
            "o": self.offsets,
            "t": self.targets,
            "r": self.result,
        }
        return _codec.pack(doc)

    @classmethod
    def decode(cls, data: bytes) -> Dag:
        """Decode a blob written by :meth:`encode`.

        Raises:
            DecodeError: truncated, corrupt, unknown version, or structurally invalid.
        """
        doc = _codec.unpack(data)
        try:
            return _from_doc(doc)
        except DecodeError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise DecodeError(f"malformed DAG blob: {exc!r}", bytes(data[:64])) from exc


def _ints(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(type(x) is int for x in value):
        raise DecodeError(f"malformed DAG blob: {name} is not a list of integers")
    return tuple(value)


def _pairs(value: Any, name: str, n: int) -> dict[int, Any]:
    if not isinstance(value, list):
        raise DecodeError(f"malformed DAG blob: {name} is not a list")
    out: dict[int, Any] = {}
    for item in value:
        if not (isinstance(item, list) and len(item) == 2 and type(item[0]) is int):
            raise DecodeError(f"malformed DAG blob: bad entry in {name}")
        if not 0 <= item[0] < n:
            raise DecodeError(f"malformed DAG blob: {name} names node {item[0]} of {n}")
        out[item[0]] = item[1]
    return out


def _check_spec(spec: Any, n: int) -> None:
    for i in spec_nodes(spec):
        if not 0 <= i < n:
            raise DecodeError(f"malformed DAG blob: result spec names node {i} of {n}")
    stack = [spec]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif item is not None and type(item) is not int:
            raise DecodeError("malformed DAG blob: bad result spec")


def _from_doc(doc: Any) -> Dag:
    if not isinstance(doc, dict):
        raise DecodeError("malformed DAG blob: top level is not an object")
    shapes_raw = doc["sh"]
    if not isinstance(shapes_raw, list):
        raise DecodeError("malformed DAG blob: shapes")
    shapes: list[tuple[str, str, dict[str, Any]]] = []
    for s in shapes_raw:
        if not (
            isinstance(s, list)
            and len(s) == 3
            and isinstance(s[0], str)
            and isinstance(s[1], str)
            and isinstance(s[2], dict)
        ):
            raise DecodeError("malformed DAG blob: bad shape entry")
        shapes.append((s[0], s[1], s[2]))
    shape_of = _ints(doc["s"], "shape column")
    n = len(shape_of)
    if any(not 0 <= s < len(shapes) for s in shape_of):
        raise DecodeError("malformed DAG blob: shape index out of range")
    args_raw = doc["a"]
    if not isinstance(args_raw, list) or len(args_raw) != n:
        raise DecodeError("malformed DAG blob: args column length")
    if not all(isinstance(a, list) for a in args_raw):
        raise DecodeError("malformed DAG blob: args entry is not a list")
    kwargs = _pairs(doc["k"], "kwargs", n)
    if not all(isinstance(v, dict) for v in kwargs.values()):
        raise DecodeError("malformed DAG blob: kwargs entry is not an object")
    delays = _pairs(doc["d"], "delays", n)
    if not all(type(v) is int and v >= 0 for v in delays.values()):
        raise DecodeError("malformed DAG blob: bad delay")
    pipes = _pairs(doc["p"], "pipes", n)
    for spec in pipes.values():
        _check_spec(spec, n)
    n_joins = doc["j"]
    if type(n_joins) is not int or n_joins < 0:
        raise DecodeError("malformed DAG blob: join count")
    size = n + n_joins
    offsets = _ints(doc["o"], "offsets")
    targets = _ints(doc["t"], "targets")
    if len(offsets) != size + 1 or offsets[0] != 0 or offsets[-1] != len(targets):
        raise DecodeError("malformed DAG blob: offsets do not match targets")
    if any(offsets[i] > offsets[i + 1] for i in range(size)):
        raise DecodeError("malformed DAG blob: offsets not monotonic")
    if any(not 0 <= t < size for t in targets):
        raise DecodeError("malformed DAG blob: edge to unknown vertex")
    pred_counts = [0] * size
    for t in targets:
        pred_counts[t] += 1
    if 0 in pred_counts[n:]:
        raise DecodeError("malformed DAG blob: a join node without predecessors")
    if not _acyclic(offsets, targets, pred_counts):
        raise DecodeError("malformed DAG blob: the graph has a cycle")
    _check_spec(doc["r"], n)
    return Dag(
        shapes=tuple(shapes),
        shape_of=shape_of,
        args=tuple(tuple(a) for a in args_raw),
        kwargs=kwargs,
        delays=delays,
        pipes=pipes,
        n_joins=n_joins,
        offsets=offsets,
        targets=targets,
        result=doc["r"],
        pred_counts=tuple(pred_counts),
    )


def _acyclic(offsets: tuple[int, ...], targets: tuple[int, ...], pred_counts: list[int]) -> bool:
    """Kahn's algorithm: whether every vertex can be ordered after its predecessors."""
    indeg = list(pred_counts)
    ready = [v for v, d in enumerate(indeg) if d == 0]
    ordered = 0
    while ready:
        v = ready.pop()
        ordered += 1
        for w in targets[offsets[v] : offsets[v + 1]]:
            indeg[w] -= 1
            if indeg[w] == 0:
                ready.append(w)
    return ordered == len(indeg)
