"""Walking canvases without recursion: pickling, equality, hashing and repr. Pure.

A canvas may nest 100,000 levels deep (issue 13), while pickle, ``==``, ``hash`` and
``repr`` of dataclasses recurse once per level and fail a few hundred levels down. So the
composite steps derive from :class:`Walked` (pickling) or :class:`WalkedValue` (pickling,
``==``, ``hash``, ``repr``), whose walks keep their own stack. This module knows steps only
through that base class (``_graph`` imports it, never the reverse: no import cycle).

Pickling: a canvas pickles as one flat list. In post-order, a message stands for itself, and an
``_Op`` builds a step of class ``cls`` from the ``n`` steps on top of the stack and its ``head``
(what identifies it apart from its children); a share op (``cls`` None) pushes the ``n``-th step
built so far again, so a sub-canvas used twice is flattened once and stays shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, final

__all__ = [
    "REPR_LIMIT",
    "Walked",
    "WalkedValue",
    "equal",
    "flatten",
    "hash_of",
    "shown",
    "unflatten",
]

#: ``repr`` of a canvas stops after about this many characters.
REPR_LIMIT = 4_000


class Walked:
    """A composite step: what the walks need of it. Pickles as a flat list (any depth)."""

    __slots__ = ()

    def walk_children(self) -> tuple[object, ...]:
        """The nested steps, in order."""
        raise NotImplementedError

    def walk_head(self) -> tuple[Any, ...]:
        """What identifies this step apart from its children (class excluded)."""
        raise NotImplementedError

    @classmethod
    def walk_build(cls, parts: list[Any], head: tuple[Any, ...]) -> Walked:
        """The step of this class with children ``parts`` and head ``head``."""
        raise NotImplementedError

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickles as one flat list: any nesting depth pickles."""
        return unflatten, (flatten(self),)


class WalkedValue(Walked):
    """A composite step compared, hashed and shown by value (Chain, Group, WithDelay)."""

    __slots__ = ()

    def walk_repr(self) -> tuple[str, str]:
        """How ``repr`` opens and closes this step around its children."""
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        """Structural equality, compared without recursion (any nesting depth)."""
        return equal(self, other) if type(other) is type(self) else NotImplemented

    def __hash__(self) -> int:
        """Hashes the whole canvas without recursion (messages with dict fields do not hash)."""
        return hash_of(self)

    def __repr__(self) -> str:
        """The constructor call, shortened beyond a few thousand characters (any depth)."""
        return shown(self)


def equal(a: object, b: object) -> bool:
    """Whether two canvases have the same structure and equal messages (a step that is not a
    value, a Graph, equals only itself)."""
    stack: list[tuple[object, object]] = [(a, b)]
    while stack:
        x, y = stack.pop()
        if x is y:
            continue
        if type(x) is not type(y):
            return False
        if isinstance(x, WalkedValue):
            assert isinstance(y, WalkedValue)
            if x.walk_head() != y.walk_head():
                return False
            stack.extend(zip(x.walk_children(), y.walk_children(), strict=True))
        elif x != y:
            return False
    return True


def hash_of(root: WalkedValue) -> int:
    """A hash consistent with :func:`equal` (raises ``TypeError`` for an unhashable message)."""
    tokens: list[object] = []
    stack: list[object] = [root]
    while stack:
        step = stack.pop()
        if isinstance(step, WalkedValue):
            tokens.append((type(step), step.walk_head()))
            stack.extend(reversed(step.walk_children()))
        else:
            tokens.append(step)
    return hash(tuple(tokens))


def shown(root: WalkedValue) -> str:
    """``Chain(a, Group(b, c), pipe=True)``, cut after :data:`REPR_LIMIT` characters."""
    out: list[str] = []
    size = 0
    stack: list[object] = [root]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            piece = item
        elif isinstance(item, WalkedValue):
            piece, closing = item.walk_repr()
            stack.append(closing)
            kids = item.walk_children()
            for i in range(len(kids) - 1, -1, -1):
                stack.append(kids[i])
                if i:
                    stack.append(", ")
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
    cls: type[Walked] | None
    n: int
    head: tuple[Any, ...] = ()


def flatten(root: Walked) -> list[object]:
    """``root`` as a flat post-order list of messages and build instructions."""
    out: list[object] = []
    built: dict[int, int] = {}  # id(step) -> its index among built steps
    keep: list[object] = []  # holds the flattened steps, so their ids stay theirs
    stack: list[tuple[object, bool]] = [(root, False)]
    while stack:
        step, children_done = stack.pop()
        if not isinstance(step, Walked):
            out.append(step)
            continue
        if id(step) in built:
            out.append(_Op(None, built[id(step)]))
            continue
        children = step.walk_children()
        if not children_done:
            stack.append((step, True))
            stack.extend((c, False) for c in reversed(children))
            continue
        out.append(_Op(type(step), len(children), step.walk_head()))
        built[id(step)] = len(built)
        keep.append(step)
    return out


def unflatten(flat: list[object]) -> Walked:
    """The canvas :func:`flatten` flattened (shared steps come back shared)."""
    stack: list[Any] = []
    built: list[Walked] = []
    for op in flat:
        if not isinstance(op, _Op):
            stack.append(op)
            continue
        if op.cls is None:
            stack.append(built[op.n])
            continue
        parts = stack[len(stack) - op.n :]
        del stack[len(stack) - op.n :]
        step = op.cls.walk_build(parts, op.head)
        built.append(step)
        stack.append(step)
    (root,) = stack
    assert isinstance(root, Walked)
    return root
