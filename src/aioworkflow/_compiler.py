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

Hostile canvases (issue 13) fail with a typed error before anything is built or stored:

* nesting depth is unbounded: no function here recurses over the canvas. Each composite step is
  compiled by a generator that yields its children to a driver loop with an explicit stack;
* a first pass (:func:`_measure`) counts the task nodes, each shared sub-canvas once, so a
  canvas over ``max_nodes`` (default 1,000,000) raises ``WorkflowTooLarge`` before any array is
  built, even one whose sub-canvases are reused exponentially often; the same pass finds a
  ``Graph`` that contains itself and measures how deeply results nest;
* a result (and a piped argument) nests one list deeper per Group or Graph around it, and
  travels as JSON: orjson refuses more than 255 levels and dramatiq's stdlib ``json`` hits the
  recursion limit, so results may nest at most ``MAX_RESULT_DEPTH`` (100) levels;
* a node's delay, summed over the ``WithDelay`` steps it starts, is at most ``MAX_DELAY_MS``.
"""

from __future__ import annotations

import json
import re
from collections import deque
from typing import TYPE_CHECKING, Any, cast

import orjson

from ._codec import has_nonfinite
from ._dag import Dag, FrozenDict, FrozenList, ResultSpec, freeze, freeze_row, make_dag
from ._graph import (
    MAX_DELAY_MS,
    Chain,
    Graph,
    Group,
    MessageLike,
    Step,
    WithDelay,
    describe,
    is_message as _is_message,
)
from .errors import GraphError, WorkflowTooLarge

if TYPE_CHECKING:
    from collections.abc import Generator

__all__ = ["DEFAULT_MAX_NODES", "INTERNAL_OPTIONS", "MAX_RESULT_DEPTH", "compile"]

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

#: ``compile()``'s default limit on task nodes: a 1,000,000-node workflow is allowed.
DEFAULT_MAX_NODES = 1_000_000
#: How many list levels a result may nest (one per Group or Graph around a step); see above.
MAX_RESULT_DEPTH = 100

_Fragment = tuple[list[int], list[int], ResultSpec]
_COMPOSITES = frozenset({Chain, Group, WithDelay, Graph})


def _children(step: Step) -> tuple[Step, ...]:
    if isinstance(step, WithDelay):
        return (step.step,)
    if isinstance(step, Graph):
        return step.snapshot()[0]
    return cast("Chain | Group", step).steps


def _measure(root: Step) -> tuple[int, int]:
    """(task nodes, result nesting depth) of a canvas; each distinct sub-canvas is visited once.

    Raises:
        GraphError: a Graph contains itself (directly or through nested steps).
    """
    if type(root) not in _COMPOSITES:
        return 1, 0
    memo: dict[int, tuple[int, int]] = {}
    keep: list[Step] = []  # holds the measured steps, so their ids stay theirs
    active: set[int] = set()
    # (step, None) on the way down; (step, its children) on the way up
    stack: list[tuple[Step, tuple[Step, ...] | None]] = [(root, None)]
    while stack:
        step, kids = stack.pop()
        key = id(step)
        if kids is None:
            if key in memo:
                continue
            if key in active:
                raise GraphError(f"{describe(step)} contains itself")
            active.add(key)
            keep.append(step)
            kids = _children(step)
            stack.append((step, kids))
            stack.extend([(c, None) for c in kids if type(c) in _COMPOSITES])
            continue
        active.discard(key)
        parts = [memo[id(c)] for c in kids if type(c) in _COMPOSITES]
        count = len(kids) - len(parts) + sum(c for c, _ in parts)
        kind = type(step)
        if kind is Group:
            depth = 1 + max((d for _, d in parts), default=0)
        elif kind is Graph:
            afters = cast("Graph", step).snapshot()[1]
            depended = {p for a in afters for p in a}
            depths = [memo[id(c)][1] if type(c) in _COMPOSITES else 0 for c in kids]
            depth = 1 + max((d for i, d in enumerate(depths) if i not in depended), default=0)
        else:  # a Chain's result is its last step's, a WithDelay's its step's
            depth = memo[id(kids[-1])][1] if kids and type(kids[-1]) in _COMPOSITES else 0
        memo[key] = (count, depth)
    return memo[id(root)]


class _Builder:
    __slots__ = ("delay", "leaves", "pipe", "succ", "waits")

    def __init__(self) -> None:
        self.succ: list[list[int]] = []
        self.leaves: list[MessageLike | None] = []  # None marks a join vertex
        self.delay: dict[int, int] = {}
        self.pipe: dict[int, ResultSpec] = {}
        self.waits: set[int] = set()  # join vertices standing for wait steps

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

    def leaf(self, step: object) -> _Fragment:
        if not _is_message(step):
            raise GraphError(f"{step!r} is not a step")
        v = self.vertex(cast("MessageLike", step))
        return [v], [v], v

    def fragment(self, root: Step) -> _Fragment:
        """The fragment of ``root``: composite steps run as generators on an explicit stack."""
        stack: list[Generator[Step, _Fragment, _Fragment]] = []
        pending: Step | None = root
        value: _Fragment | None = None
        while True:
            if pending is not None:
                if type(pending) in _COMPOSITES:
                    stack.append(self.composite(pending))
                    value = None  # a new generator is started with send(None)
                else:
                    value = self.leaf(pending)
                pending = None
            if not stack:
                assert value is not None
                return value
            try:
                pending = stack[-1].send(value)  # type: ignore[arg-type]  # None starts it
            except StopIteration as stop:
                stack.pop()
                value = stop.value

    def composite(self, step: Step) -> Generator[Step, _Fragment, _Fragment]:
        if isinstance(step, Chain):
            return self.chain(step)
        if isinstance(step, Group):
            return self.group(step)
        if isinstance(step, WithDelay):
            return self.with_delay(step)
        return self.graph(cast("Graph", step))

    def sub(self, step: Step) -> Generator[Step, _Fragment, _Fragment]:
        """A child's fragment: a leaf at once, a composite through the driver loop."""
        if type(step) not in _COMPOSITES:
            return self.leaf(step)
        return (yield step)

    def group(self, group: Group) -> Generator[Step, _Fragment, _Fragment]:
        entries: list[int] = []
        exits: list[int] = []
        results: list[ResultSpec] = []
        for branch in group.steps:
            if type(branch) in _COMPOSITES:
                b_in, b_out, b_res = yield branch
            else:
                b_in, b_out, b_res = self.leaf(branch)
            entries += b_in
            exits += b_out
            results.append(b_res)
        return entries, exits, results

    def with_delay(self, step: WithDelay) -> Generator[Step, _Fragment, _Fragment]:
        entries, exits, result = yield from self.sub(step.step)
        if not entries and not exits:
            # A wait step (``WithDelay(Chain(), delay=...)``): a join vertex holds the delay
            # until ``_resolve_waits`` hands it on to the tasks after it.
            entries = exits = [self.vertex(None)]
            self.waits.add(entries[0])
        for v in entries:
            self.delay[v] = self.delay.get(v, 0) + step.delay
        return entries, exits, result

    def chain(self, chain: Chain) -> Generator[Step, _Fragment, _Fragment]:
        first: list[int] | None = None
        prev_exits: list[int] = []
        result: ResultSpec = None
        for i, step in enumerate(chain.steps):
            if type(step) in _COMPOSITES:
                entries, exits, res = yield step
            else:
                entries, exits, res = self.leaf(step)
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

    def graph(self, graph: Graph) -> Generator[Step, _Fragment, _Fragment]:
        steps, afters = graph.snapshot()
        frags: list[_Fragment] = []
        for s in steps:
            frag = yield from self.sub(s)
            frags.append(frag)
        eff_exits = _pass_through(steps, afters, frags)
        depended: set[int] = set()
        entries: list[int] = []
        for i, (f_in, _, _) in enumerate(frags):
            depended.update(afters[i])
            preds = list(dict.fromkeys(v for p in afters[i] for v in eff_exits[p]))
            if preds:
                self.connect(preds, f_in)
            else:
                entries += f_in
        sinks = [i for i in range(len(steps)) if i not in depended]
        exits = list(dict.fromkeys(v for i in sinks for v in eff_exits[i]))
        return entries, exits, [frags[i][2] for i in sinks]


def _pass_through(
    steps: tuple[Step, ...], afters: tuple[tuple[int, ...], ...], frags: list[_Fragment]
) -> list[list[int]]:
    """For each step of a Graph, the exits a later step must wait for.

    An empty step passes its predecessors' exits on. Edges added with ``Graph.edge`` may point
    backwards, so this is a depth-first walk (an explicit stack: a line of 100,000 empty steps
    is fine) that also finds cycles through empty steps.
    """
    eff: list[list[int] | None] = [f[1] if (f[0] or f[1]) else None for f in frags]
    visiting: set[int] = set()
    for start in range(len(steps)):
        if eff[start] is not None:
            continue
        stack = [start]
        visiting.add(start)
        while stack:
            i = stack[-1]
            missing = [p for p in afters[i] if eff[p] is None]
            if missing:
                for p in missing:
                    if p in visiting:
                        raise GraphError(
                            f"Graph: cycle through empty step {p} ({describe(steps[p])})"
                        )
                p = missing[0]
                visiting.add(p)
                stack.append(p)
                continue
            stack.pop()
            visiting.discard(i)
            eff[i] = list(dict.fromkeys(v for p in afters[i] for v in cast("list[int]", eff[p])))
    return cast("list[list[int]]", eff)


def _resolve_waits(b: _Builder, order: list[int]) -> set[int]:
    """Hand the delay of each wait step on to the steps after it; returns the vertices dropped.

    A wait step compiles to a delayed join vertex, which is then bypassed: its predecessors
    lead straight to its successors, and each successor adds the wait's delay to its own
    (counted, like any delay, from the successor's release). A delay that reaches an ordinary
    join vertex goes on to the join's successors. Walking in topological order passes a wait's
    delay through the waits and joins after it. A wait at the very end of the workflow has
    nothing to delay and is dropped. An ordinary join left with no predecessor or no successor
    by those bypasses is bypassed too (the runtime only releases joins that have both).
    """
    if not b.waits:
        return set()
    joins = [v for v in order if b.leaves[v] is None]
    preds: dict[int, list[int]] = {v: [] for v in joins}
    for u, succ in enumerate(b.succ):
        for w in succ:
            if w in preds:
                preds[w].append(u)
    dropped: set[int] = set()

    def bypass(v: int) -> None:
        after = b.succ[v]
        for x in after:
            if x in preds:
                preds[x] = [p for p in preds[x] if p != v] + preds[v]
        for u in preds[v]:
            b.succ[u] = list(
                dict.fromkeys(x for y in b.succ[u] for x in (after if y == v else (y,)))
            )
        b.succ[v] = []
        dropped.add(v)

    for v in joins:
        b.pipe.pop(v, None)
        d = b.delay.pop(v, 0)
        if d:
            for x in b.succ[v]:
                b.delay[x] = b.delay.get(x, 0) + d
        if v in b.waits or not preds[v]:
            bypass(v)
    for v in reversed(joins):
        if v not in dropped and not b.succ[v]:
            bypass(v)
    return dropped


def _options(msg: MessageLike) -> dict[str, Any]:
    return {k: v for k, v in msg.options.items() if k not in INTERNAL_OPTIONS}


#: orjson writes these natively, where dramatiq's JSONEncoder (``json.dumps``) raises or writes
#: something else: they go to ``_as_dramatiq_json`` instead, which decides as json.dumps does.
_STRICT = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)
#: A UUID as orjson writes it: the one value orjson encodes natively that json.dumps refuses and
#: that no passthrough option covers (seeing this text, the columns are checked with json.dumps).
_UUID_TEXT = re.compile(rb'"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"')


def _as_dramatiq_json(value: object) -> object:
    """orjson's ``default``: what json.dumps writes for a value orjson passed through."""
    # json.dumps writes subclasses of the JSON types (IntEnum, StrEnum, OrderedDict, ...) as
    # their base type's value; anything else (datetime, UUID, dataclasses, sets) it refuses.
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):  # bool never gets here: orjson writes it natively
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, dict):
        return dict(value)  # pyright: ignore[reportUnknownArgumentType, reportUnknownVariableType]
    if isinstance(value, (list, tuple)):
        return list(cast("list[Any]", value))
    raise TypeError(
        f"{type(value).__qualname__} is not JSON serializable (dramatiq's JSONEncoder refuses "
        "it; pass it as a string or number yourself)"
    )


def _dumps_strict(values: object) -> bytes:
    """JSON of ``values`` as dramatiq's JSONEncoder would accept it, or TypeError."""
    blob = orjson.dumps(values, default=_as_dramatiq_json, option=_STRICT)
    # orjson writes NaN and infinities as null: refuse them rather than change them.
    if b"null" in blob and has_nonfinite(values):
        raise TypeError("a float NaN or infinity has no JSON form")
    if _UUID_TEXT.search(blob) is not None:
        json.dumps(values, default=_as_dramatiq_json)  # raises TypeError on a uuid.UUID
    return blob


def _normalise(columns: list[Any], leaves: list[MessageLike]) -> Any:
    try:
        return orjson.loads(_dumps_strict(columns))
    except TypeError as exc:
        for leaf in leaves:
            values = [leaf.args, dict(leaf.kwargs), _options(leaf)]
            try:
                _dumps_strict(values)
            except TypeError as leaf_exc:
                raise GraphError(
                    f"{describe(leaf)}: an argument or option cannot be encoded as JSON: {leaf_exc}"
                ) from leaf_exc
        # Each leaf encodes alone, but not all of them together: a value nested right at
        # orjson's depth limit (the columns add one level).
        raise GraphError(f"the arguments cannot be encoded as JSON together: {exc}") from exc


def _renumber(spec: ResultSpec, new: list[int]) -> ResultSpec:
    # Recursion is bounded: _measure() caps result nesting at MAX_RESULT_DEPTH.
    if isinstance(spec, int):
        return new[spec]
    if isinstance(spec, list):
        return FrozenList(_renumber(s, new) for s in spec)
    return None


def compile(canvas: Step, *, max_nodes: int = DEFAULT_MAX_NODES) -> Dag:
    """Compile a canvas into an indexed DAG.

    Args:
        canvas: a message, Chain, Group, WithDelay or Graph, nested freely (to any depth).
        max_nodes: the most task nodes (leaf messages) the workflow may have.

    Returns:
        The compiled :class:`~aioworkflow.Dag`; compiling the same canvas twice gives equal DAGs.

    Raises:
        WorkflowTooLarge: the canvas has more than ``max_nodes`` task nodes (found by counting,
            before the DAG is built).
        GraphError: a bad step, a cycle in a Graph, a Graph that contains itself, results
            nested more than ``MAX_RESULT_DEPTH`` levels, a node whose summed delay exceeds
            ``MAX_DELAY_MS``, or a value that cannot be encoded as JSON.
        ValueError: ``max_nodes`` is not a non-negative integer.
    """
    if type(max_nodes) is not int or max_nodes < 0:
        raise ValueError(f"max_nodes must be a non-negative integer, got {max_nodes!r}")
    count, depth = _measure(canvas)
    if count > max_nodes:
        raise WorkflowTooLarge(count, max_nodes)
    if depth > MAX_RESULT_DEPTH:
        raise GraphError(
            f"{describe(canvas)}: results nest {depth} levels deep (one per Group or Graph); "
            f"at most {MAX_RESULT_DEPTH} can travel as JSON"
        )
    b = _Builder()
    result = b.fragment(canvas)[2]
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

    waits = _resolve_waits(b, order)
    for v, d in b.delay.items():
        if d > MAX_DELAY_MS:
            raise GraphError(
                f"{describe(b.leaves[v])}: nested WithDelay steps add up to {d} ms, more than "
                f"the maximum of {MAX_DELAY_MS} ms"
            )
    tasks = [v for v in order if b.leaves[v] is not None]
    joins = [v for v in order if b.leaves[v] is None and v not in waits]
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

    leaves = cast("list[MessageLike]", [b.leaves[v] for v in tasks])
    args, kwargs, options = _normalise(
        [[m.args for m in leaves], [dict(m.kwargs) for m in leaves], [_options(m) for m in leaves]],
        leaves,
    )
    shape_ids: dict[tuple[str, str, bytes], int] = {}
    shapes: list[tuple[str, str, FrozenDict[str, Any]]] = []
    shape_of: list[int] = []
    for m, opts in zip(leaves, options, strict=True):
        key = (m.actor_name, m.queue_name, orjson.dumps(opts, option=orjson.OPT_SORT_KEYS))
        sid = shape_ids.get(key)
        if sid is None:
            sid = shape_ids[key] = len(shapes)
            shapes.append((m.actor_name, m.queue_name, freeze(opts)))
        shape_of.append(sid)
    # The user's message ids, kept so that each delivery of a node carries its message's id
    # (dramatiq's Results and id-keyed tools). A message-like leaf without a string id gets "".
    ids = tuple(_message_id(m) for m in leaves)

    return make_dag(
        shapes=tuple(shapes),
        shape_of=tuple(shape_of),
        args=tuple(map(freeze_row, args)),
        kwargs=FrozenDict({i: freeze(kw) for i, kw in enumerate(kwargs) if kw}),
        delays=FrozenDict({new[v]: d for v, d in b.delay.items() if d}),
        pipes=FrozenDict({new[v]: _renumber(s, new) for v, s in b.pipe.items()}),
        n_joins=len(joins),
        offsets=tuple(offsets),
        targets=tuple(targets),
        result=_renumber(result, new),
        ids=ids if any(ids) else (),
    )


def _message_id(leaf: MessageLike) -> str:
    value = getattr(leaf, "message_id", "")
    return value if isinstance(value, str) else ""
