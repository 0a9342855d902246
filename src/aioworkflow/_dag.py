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

A ``Dag`` is immutable all the way down (issue 12): many nodes share one shape's options, and
workers keep decoded DAGs in a cache, so a caller mutating what ``dag.node(0)`` returned must
not change other nodes or later messages. Every container a ``Dag`` or a ``Node`` exposes is a
tuple, a :class:`FrozenDict` or a :class:`FrozenList`: subclasses of ``dict`` and ``list`` (so
orjson, ``json`` and dramatiq encode them as before and ``isinstance`` checks still hold) whose
mutating methods raise ``TypeError``.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias, cast, final

from . import _codec
from ._frozen import FrozenDict, FrozenList, freeze, freeze_row
from .errors import DecodeError

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "Dag",
    "FrozenDict",
    "FrozenList",
    "Node",
    "ResultSpec",
    "freeze",
    "freeze_row",
    "make_dag",
    "spec_nodes",
]

ResultSpec: TypeAlias = "int | list[ResultSpec] | None"

_EMPTY: FrozenDict[str, Any] = FrozenDict()


class Node(NamedTuple):
    """One task node of a compiled workflow (a dramatiq message, without broker bookkeeping).

    Immutable: ``kwargs`` and ``options`` are :class:`FrozenDict`, and lists inside the
    arguments are :class:`FrozenList`.
    """

    actor_name: str
    queue_name: str
    args: tuple[Any, ...]
    kwargs: FrozenDict[str, Any]
    options: FrozenDict[str, Any]
    #: Milliseconds between the node's release and its start (``WithDelay``).
    delay: int
    #: Where the piped input comes from (``Chain(pipe=True)``), or None. None is ambiguous: a
    #: node in ``Dag.pipes`` whose previous step was empty gets ``None`` as its piped argument.
    pipe: ResultSpec
    #: The ``message_id`` of the message the user built ("" in a DAG stored before ids were
    #: kept): every delivery of the node carries it, so dramatiq's ``Results`` finds the result.
    message_id: str = ""


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
    """A compiled workflow. Build it with :func:`aioworkflow.compile`.

    Immutable: its fields are tuples, :class:`FrozenDict` and :class:`FrozenList` (values given
    as plain dicts and lists are frozen on construction).
    """

    shapes: tuple[tuple[str, str, FrozenDict[str, Any]], ...]
    shape_of: tuple[int, ...]
    args: tuple[tuple[Any, ...], ...]
    #: Values are FrozenDicts at run time; declared as ``dict`` so that ``kwargs.get(i, {})``
    #: infers ``dict[str, Any]`` under pyright too.
    kwargs: FrozenDict[int, dict[str, Any]]
    delays: FrozenDict[int, int]
    pipes: FrozenDict[int, ResultSpec]
    n_joins: int
    offsets: tuple[int, ...]
    targets: tuple[int, ...]
    result: ResultSpec
    pred_counts: tuple[int, ...] = field(compare=False, default=())
    #: Per task node, the ``message_id`` of the user's message (empty: not kept, as in a DAG
    #: stored before ids were kept; its deliveries then get fresh ids).
    ids: tuple[str, ...] = field(compare=False, default=())

    def __post_init__(self) -> None:
        for name in _FROZEN_FIELDS:
            object.__setattr__(self, name, freeze(getattr(self, name)))
        if not self.pred_counts:
            object.__setattr__(self, "pred_counts", _in_degrees(self.size, self.targets))

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
            cast("FrozenDict[str, Any]", self.kwargs.get(i, _EMPTY)),
            options,
            self.delays.get(i, 0),
            self.pipes.get(i),
            self.ids[i] if self.ids else "",
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
    def encode(self, *, ids: bool = True) -> bytes:
        """The blob stored once per workflow (orjson + lz4 frame, versioned header).

        ``ids=False`` leaves the message id column out (direct mode: the templates hold the
        ids, and the column is the one part of the blob that does not compress).
        """
        doc: dict[str, Any] = {
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
        if ids and self.ids:
            doc["i"] = _pack_ids(self.ids)
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


_FROZEN_FIELDS = ("shapes", "args", "kwargs", "delays", "pipes", "result")


def _in_degrees(size: int, targets: tuple[int, ...]) -> tuple[int, ...]:
    counts = [0] * size
    for t in targets:
        counts[t] += 1
    return tuple(counts)


def make_dag(
    *,
    shapes: tuple[tuple[str, str, FrozenDict[str, Any]], ...],
    shape_of: tuple[int, ...],
    args: tuple[tuple[Any, ...], ...],
    kwargs: FrozenDict[int, dict[str, Any]],
    delays: FrozenDict[int, int],
    pipes: FrozenDict[int, ResultSpec],
    n_joins: int,
    offsets: tuple[int, ...],
    targets: tuple[int, ...],
    result: ResultSpec,
    pred_counts: tuple[int, ...] | None = None,
    ids: tuple[str, ...] = (),
) -> Dag:
    """A :class:`Dag` of values already frozen with :func:`freeze` (by ``compile`` and
    ``Dag.decode``), without walking them again as ``Dag(...)`` does."""
    dag = object.__new__(Dag)
    fields = {
        "shapes": shapes,
        "shape_of": shape_of,
        "args": args,
        "kwargs": kwargs,
        "delays": delays,
        "pipes": pipes,
        "n_joins": n_joins,
        "offsets": offsets,
        "targets": targets,
        "result": result,
        "ids": ids,
    }
    for name, value in fields.items():
        object.__setattr__(dag, name, value)
    size = len(shape_of) + n_joins
    object.__setattr__(
        dag, "pred_counts", pred_counts if pred_counts is not None else _in_degrees(size, targets)
    )
    return dag


def _list(value: object, what: str) -> list[object]:
    if not isinstance(value, list):
        raise DecodeError(f"malformed DAG blob: {what} is not a list")
    return cast("list[object]", value)


def _ints(value: object, name: str) -> tuple[int, ...]:
    items = _list(value, name)
    if not all(type(x) is int for x in items):
        raise DecodeError(f"malformed DAG blob: {name} is not a list of integers")
    return cast("tuple[int, ...]", tuple(items))


def _pairs(value: object, name: str, n: int) -> dict[int, object]:
    out: dict[int, object] = {}
    for raw in _list(value, name):
        item = cast("list[object]", raw) if isinstance(raw, list) else None
        if item is None or len(item) != 2 or type(item[0]) is not int:
            raise DecodeError(f"malformed DAG blob: bad entry in {name}")
        key: int = item[0]
        if not 0 <= key < n:
            raise DecodeError(f"malformed DAG blob: {name} names node {key} of {n}")
        out[key] = item[1]
    return out


def _check_spec(spec: object, n: int) -> ResultSpec:
    stack = [spec]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(cast("list[object]", item))
        elif type(item) is int:
            if not 0 <= item < n:
                raise DecodeError(f"malformed DAG blob: result spec names node {item} of {n}")
        elif item is not None:
            raise DecodeError("malformed DAG blob: bad result spec")
    return cast("ResultSpec", spec)


def _str_dict(value: object, what: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise DecodeError(f"malformed DAG blob: {what} is not an object")
    return cast("dict[str, object]", value)


def _from_doc(raw: object) -> Dag:
    if not isinstance(raw, dict):
        raise DecodeError("malformed DAG blob: top level is not an object")
    doc = cast("dict[str, object]", raw)
    shapes: list[tuple[str, str, dict[str, object]]] = []
    for entry in _list(doc["sh"], "shapes"):
        s = cast("list[object]", entry) if isinstance(entry, list) else []
        if not (len(s) == 3 and isinstance(actor := s[0], str) and isinstance(queue := s[1], str)):
            raise DecodeError("malformed DAG blob: bad shape entry")
        shapes.append((actor, queue, _str_dict(s[2], "options")))
    shape_of = _ints(doc["s"], "shape column")
    n = len(shape_of)
    if any(not 0 <= s < len(shapes) for s in shape_of):
        raise DecodeError("malformed DAG blob: shape index out of range")
    args_raw = _list(doc["a"], "args column")
    if len(args_raw) != n:
        raise DecodeError("malformed DAG blob: args column length")
    args = [_list(a, "args entry") for a in args_raw]
    kwargs = {i: _str_dict(v, "kwargs entry") for i, v in _pairs(doc["k"], "kwargs", n).items()}
    delays: dict[int, int] = {}
    for i, d in _pairs(doc["d"], "delays", n).items():
        if type(d) is not int or d < 0:
            raise DecodeError("malformed DAG blob: bad delay")
        delays[i] = d
    pipes = {i: _check_spec(spec, n) for i, spec in _pairs(doc["p"], "pipes", n).items()}
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
    pred_counts = list(_in_degrees(size, targets))
    if 0 in pred_counts[n:]:
        raise DecodeError("malformed DAG blob: a join node without predecessors")
    if not _acyclic(offsets, targets, pred_counts):
        raise DecodeError("malformed DAG blob: the graph has a cycle")
    result = _check_spec(doc["r"], n)
    ids = _ids(doc.get("i", ()), n)
    return make_dag(
        shapes=tuple((a, q, cast("FrozenDict[str, Any]", freeze(o))) for a, q, o in shapes),
        shape_of=shape_of,
        args=tuple(freeze_row(a) for a in args),
        kwargs=FrozenDict(
            {i: cast("FrozenDict[str, Any]", freeze(kw)) for i, kw in kwargs.items()}
        ),
        delays=FrozenDict(delays),
        pipes=FrozenDict({i: freeze(spec) for i, spec in pipes.items()}),
        n_joins=n_joins,
        offsets=offsets,
        targets=targets,
        result=freeze(result),
        pred_counts=tuple(pred_counts),
        ids=ids,
    )


def _pack_ids(ids: tuple[str, ...]) -> str | tuple[str, ...]:
    """The message id column as stored. dramatiq's ids are canonical uuid strings (36
    characters that do not compress): packed as their 16 bytes each, base64 in one string
    (~21.3 bytes a node); a column with any other id stays a list of strings."""
    n = len(ids)
    if set(map(len, ids)) != {36}:
        return ids
    # checked with C-speed string operations (a regex over 3.6 MB takes ~70 ms)
    joined = "".join(ids)
    dashes = "-" * n
    if any(joined[k::36] != dashes for k in (8, 13, 18, 23)):
        return ids
    digits = joined.replace("-", "")
    if len(digits) != 32 * n or digits != digits.lower():
        return ids
    try:
        raw = bytes.fromhex(digits)
    except ValueError:
        return ids
    if len(raw) != 16 * n:  # fromhex skips whitespace
        return ids
    return base64.b64encode(raw).decode()


def _ids(value: object, n: int) -> tuple[str, ...]:
    """The message id column: absent in blobs written before ids were kept, else n strings
    (packed uuids, or a list)."""
    if value == ():
        return ()
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise DecodeError("malformed DAG blob: message id column") from exc
        if len(raw) != 16 * n:
            raise DecodeError("malformed DAG blob: message id column")
        h = raw.hex()
        return tuple(
            f"{h[k : k + 8]}-{h[k + 8 : k + 12]}-{h[k + 12 : k + 16]}-{h[k + 16 : k + 20]}-"
            f"{h[k + 20 : k + 32]}"
            for k in range(0, 32 * n, 32)
        )
    ids = _list(value, "message ids")
    if len(ids) != n or not all(isinstance(i, str) for i in ids):
        raise DecodeError("malformed DAG blob: message id column")
    return cast("tuple[str, ...]", tuple(ids))


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
