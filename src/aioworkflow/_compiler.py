"""The graph compiler: canvas in, indexed DAG out. Pure, deterministic, no I/O.

Theory of operation
-------------------
Every step compiles to a *fragment*: its entry vertices (those that start when the step is
released), its exit vertices (those whose completion ends the step) and its result spec.

* a message is one task vertex: entries = exits = {v}, result = v;
* ``Group`` is the union of its branches' fragments; result = list of branch results;
* ``Chain`` connects the exits of each non-empty step to the entries of the next one; an empty
  step is transparent for ordering; result = the last step's result;
* ``WithDelay`` adds its delay to the entries of its step;
* ``Graph`` compiles each added step, then connects the union of the exits of its ``after``
  steps to its entries; an empty step passes its predecessors' exits through.

``connect(A, B)`` adds all |A|*|B| edges when that is no more than |A|+|B|; otherwise it adds one
virtual join vertex J with A -> J -> B. So a group after a group costs N+M edges, and a chain
of groups stays linear. Vertices are then renumbered by Kahn's algorithm (which also finds
cycles): task vertices first, in topological order, join vertices after them.

Arguments, keyword arguments and options are round-tripped through orjson here, so a value that
cannot be encoded is a ``GraphError`` naming the step, at compile time rather than on a worker,
and the compiled DAG holds exactly what a worker will see.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import orjson

from ._codec import has_nonfinite
from ._dag import Dag, ResultSpec
from ._graph import Chain, Graph, Group, MessageLike, Step, WithDelay, _is_message, describe
from .errors import GraphError

__all__ = ["INTERNAL_OPTIONS", "compile"]

#: Options dramatiq and aioworkflow set per delivery; a compiled node never keeps them.
INTERNAL_OPTIONS = frozenset(
    {
        "redis_message_id",
        "eta",
        "retries",
        "requeue_timestamp",
        "traceback",
        "aiowf",
        "pipe_target",
        "pipe_ignore",
    }
)

_Fragment = tuple[list[int], list[int], ResultSpec]
_COMPOSITES = frozenset({Chain, Group, WithDelay, Graph})


class _Builder:
    __slots__ = ("delay", "leaves", "pipe", "succ")

    def __init__(self) -> None:
        self.succ: list[list[int]] = []
        self.leaves: list[MessageLike | None] = []  # None marks a join vertex
        self.delay: dict[int, int] = {}
        self.pipe: dict[int, ResultSpec] = {}

    def vertex(self, leaf: MessageLike | None) -> int:
        self.succ.append([])
        self.leaves.append(leaf)
        return len(self.leaves) - 1

    def connect(self, exits: list[int], entries: list[int]) -> None:
        if not exits or not entries:
            return
        if len(exits) * len(entries) <= len(exits) + len(entries):
            for u in exits:
                self.succ[u].extend(entries)
            return
        join = self.vertex(None)
        for u in exits:
            self.succ[u].append(join)
        self.succ[join].extend(entries)

    def step(self, step: Step) -> _Fragment:
        kind = type(step)
        if kind not in _COMPOSITES and _is_message(step):
            v = self.vertex(step)  # type: ignore[arg-type]
            return [v], [v], v
        if isinstance(step, Chain):
            return self.chain(step)
        if isinstance(step, Group):
            entries: list[int] = []
            exits: list[int] = []
            results: list[ResultSpec] = []
            for branch in step.steps:
                b_in, b_out, b_res = self.step(branch)
                entries += b_in
                exits += b_out
                results.append(b_res)
            return entries, exits, results
        if isinstance(step, WithDelay):
            entries, exits, result = self.step(step.step)
            for v in entries:
                self.delay[v] = self.delay.get(v, 0) + step.delay
            return entries, exits, result
        if isinstance(step, Graph):
            return self.graph(step)
        if _is_message(step):
            v = self.vertex(step)
            return [v], [v], v
        raise GraphError(f"{step!r} is not a step")

    def chain(self, chain: Chain) -> _Fragment:
        first: list[int] | None = None
        prev_exits: list[int] = []
        result: ResultSpec = None
        for i, step in enumerate(chain.steps):
            entries, exits, res = self.step(step)
            if chain.pipe and i > 0:
                for v in entries:
                    self.pipe[v] = result
            self.connect(prev_exits, entries)
            if first is None and entries:
                first = entries
            if exits:
                prev_exits = exits
            result = res
        return first or [], prev_exits, result

    def graph(self, graph: Graph) -> _Fragment:
        steps, afters = graph.snapshot()
        frags = [self.step(s) for s in steps]
        # Exits a later step must wait for: an empty step passes its predecessors' exits on.
        # Edges added with Graph.edge may point backwards, so resolve pass-through lazily.
        eff_exits: list[list[int] | None] = [None] * len(steps)
        visiting: set[int] = set()

        def exits_of(i: int) -> list[int]:
            cached = eff_exits[i]
            if cached is not None:
                return cached
            if frags[i][1] or frags[i][0]:
                out = frags[i][1]
            else:
                if i in visiting:
                    raise GraphError(f"Graph: cycle through empty step {i} ({describe(steps[i])})")
                visiting.add(i)
                out = list(dict.fromkeys(v for p in afters[i] for v in exits_of(p)))
                visiting.discard(i)
            eff_exits[i] = out
            return out

        depended: set[int] = set()
        entries: list[int] = []
        for i, (f_in, _, _) in enumerate(frags):
            depended.update(afters[i])
            preds = list(dict.fromkeys(v for p in afters[i] for v in exits_of(p)))
            if preds:
                self.connect(preds, f_in)
            else:
                entries += f_in
        sinks = [i for i in range(len(steps)) if i not in depended]
        exits = list(dict.fromkeys(v for i in sinks for v in exits_of(i)))
        return entries, exits, [frags[i][2] for i in sinks]


def _options(msg: MessageLike) -> dict[str, Any]:
    return {k: v for k, v in msg.options.items() if k not in INTERNAL_OPTIONS}


def _normalise(columns: list[Any], leaves: list[MessageLike]) -> Any:
    try:
        blob = orjson.dumps(columns)
        # orjson writes NaN and infinities as null: refuse them rather than change them.
        if b"null" in blob and has_nonfinite(columns):
            raise TypeError("a float NaN or infinity")
        return orjson.loads(blob)
    except TypeError:
        for leaf in leaves:
            values = [leaf.args, dict(leaf.kwargs), _options(leaf)]
            try:
                orjson.dumps(values)
                if has_nonfinite(values):
                    raise TypeError("a float NaN or infinity has no JSON form")
            except TypeError as exc:
                raise GraphError(
                    f"{describe(leaf)}: an argument or option cannot be encoded as JSON: {exc}"
                ) from exc
        raise  # pragma: no cover - the loop above always finds the culprit


def compile(canvas: Step) -> Dag:
    """Compile a canvas into an indexed DAG.

    Args:
        canvas: a message, Chain, Group, WithDelay or Graph, nested freely.

    Returns:
        The compiled :class:`~aioworkflow.Dag`; compiling the same canvas twice gives equal DAGs.

    Raises:
        GraphError: a bad step, a cycle in a Graph, or a value that cannot be encoded as JSON.
    """
    b = _Builder()
    _, _, result = b.step(canvas)
    n_vertices = len(b.leaves)

    # Kahn's algorithm: FIFO order over creation order is deterministic and linear.
    indeg = [0] * n_vertices
    for succ in b.succ:
        for w in succ:
            indeg[w] += 1
    queue = deque(v for v in range(n_vertices) if indeg[v] == 0)
    order: list[int] = []
    while queue:
        v = queue.popleft()
        order.append(v)
        for w in b.succ[v]:
            indeg[w] -= 1
            if indeg[w] == 0:
                queue.append(w)
    if len(order) != n_vertices:
        stuck = [v for v in range(n_vertices) if indeg[v] > 0 and b.leaves[v] is not None]
        names = ", ".join(describe(b.leaves[v]) for v in stuck[:3])
        raise GraphError(f"Graph has a cycle through {len(stuck)} steps, including: {names}")

    tasks = [v for v in order if b.leaves[v] is not None]
    joins = [v for v in order if b.leaves[v] is None]
    new = [0] * n_vertices
    for i, v in enumerate(tasks):
        new[v] = i
    for j, v in enumerate(joins, start=len(tasks)):
        new[v] = j

    offsets = [0]
    targets: list[int] = []
    for v in tasks + joins:
        targets.extend(new[w] for w in b.succ[v])
        offsets.append(len(targets))

    leaves: list[MessageLike] = [b.leaves[v] for v in tasks]  # type: ignore[misc]
    args, kwargs, options = _normalise(
        [[m.args for m in leaves], [dict(m.kwargs) for m in leaves], [_options(m) for m in leaves]],
        leaves,
    )
    shape_ids: dict[tuple[str, str, bytes], int] = {}
    shapes: list[tuple[str, str, dict[str, Any]]] = []
    shape_of: list[int] = []
    for m, opts in zip(leaves, options, strict=True):
        key = (m.actor_name, m.queue_name, orjson.dumps(opts, option=orjson.OPT_SORT_KEYS))
        sid = shape_ids.get(key)
        if sid is None:
            sid = shape_ids[key] = len(shapes)
            shapes.append((m.actor_name, m.queue_name, opts))
        shape_of.append(sid)

    def renumber(spec: ResultSpec) -> ResultSpec:
        if isinstance(spec, int):
            return new[spec]
        if isinstance(spec, list):
            return [renumber(s) for s in spec]
        return None

    return Dag(
        shapes=tuple(shapes),
        shape_of=tuple(shape_of),
        args=tuple(tuple(a) for a in args),
        kwargs={i: kw for i, kw in enumerate(kwargs) if kw},
        delays={new[v]: d for v, d in b.delay.items() if d},
        pipes={new[v]: renumber(s) for v, s in b.pipe.items()},
        n_joins=len(joins),
        offsets=tuple(offsets),
        targets=tuple(targets),
        result=renumber(result),
    )
