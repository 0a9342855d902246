"""Immutable containers for compiled DAGs: ``FrozenDict``, ``FrozenList``, ``freeze``. Pure.

A ``Dag`` is immutable all the way down (issue 12). These are subclasses of ``dict`` and
``list``, so orjson, ``json`` and dramatiq encode them as before and ``isinstance`` checks still
hold, whose mutating methods raise ``TypeError``. :func:`freeze` converts plain values, without
recursion (values may nest as deep as orjson allows).
"""

from __future__ import annotations

from typing import Any, NoReturn, TypeVar, cast, final

__all__ = ["FrozenDict", "FrozenList", "freeze", "freeze_row"]

_K = TypeVar("_K")
_V = TypeVar("_V")
_T = TypeVar("_T")


def _immutable(obj: object) -> NoReturn:
    raise TypeError(f"{type(obj).__name__} is immutable: a compiled Dag cannot be changed")


@final
class FrozenDict(dict[_K, _V]):
    """A ``dict`` whose mutating methods raise ``TypeError`` (encodes as a plain dict)."""

    __slots__ = ()

    def __setitem__(self, *_: object) -> NoReturn:
        """Raises ``TypeError``: the container is immutable."""
        _immutable(self)

    def __delitem__(self, *_: object) -> NoReturn:
        """Raises ``TypeError``: the container is immutable."""
        _immutable(self)

    def __ior__(self, *_: object) -> NoReturn:  # type: ignore[misc]  # raises instead
        """Raises ``TypeError``: the container is immutable."""
        _immutable(self)

    def clear(self) -> NoReturn:
        """Raises ``TypeError``: the container is immutable."""
        _immutable(self)

    def pop(self, *_: object) -> NoReturn:
        """Raises ``TypeError``: the container is immutable."""
        _immutable(self)

    def popitem(self) -> NoReturn:
        """Raises ``TypeError``: the container is immutable."""
        _immutable(self)

    def setdefault(self, *_: object) -> NoReturn:
        """Raises ``TypeError``: the container is immutable."""
        _immutable(self)

    def update(self, *_: object, **__: object) -> NoReturn:
        """Raises ``TypeError``: the container is immutable."""
        _immutable(self)

    def __reduce__(self) -> tuple[object, ...]:
        """Pickles as a plain dict handed to the constructor (no ``__setitem__`` calls)."""
        return FrozenDict, (dict(self),)

    def __repr__(self) -> str:
        return f"FrozenDict({dict(self)!r})"


@final
class FrozenList(list[_T]):
    """A ``list`` whose mutating methods raise ``TypeError`` (encodes as a plain list)."""

    __slots__ = ()

    def __setitem__(self, *_: object) -> NoReturn:
        """Raises ``TypeError``: the container is immutable."""
        _immutable(self)

    def __delitem__(self, *_: object) -> NoReturn:
        """Raises ``TypeError``: the container is immutable."""
        _immutable(self)

    def __iadd__(self, *_: object) -> NoReturn:  # type: ignore[misc]  # raises instead
        """Raises ``TypeError``: the container is immutable."""
        _immutable(self)

    def __imul__(self, *_: object) -> NoReturn:
        """Raises ``TypeError``: the container is immutable."""
        _immutable(self)

    def append(self, *_: object) -> NoReturn:
        """Raises ``TypeError``: the container is immutable."""
        _immutable(self)

    def extend(self, *_: object) -> NoReturn:
        """Raises ``TypeError``: the container is immutable."""
        _immutable(self)

    def insert(self, *_: object) -> NoReturn:
        """Raises ``TypeError``: the container is immutable."""
        _immutable(self)

    def pop(self, *_: object) -> NoReturn:
        """Raises ``TypeError``: the container is immutable."""
        _immutable(self)

    def remove(self, *_: object) -> NoReturn:
        """Raises ``TypeError``: the container is immutable."""
        _immutable(self)

    def clear(self) -> NoReturn:
        """Raises ``TypeError``: the container is immutable."""
        _immutable(self)

    def sort(self, *_: object, **__: object) -> NoReturn:
        """Raises ``TypeError``: the container is immutable."""
        _immutable(self)

    def reverse(self) -> NoReturn:
        """Raises ``TypeError``: the container is immutable."""
        _immutable(self)

    def __reduce__(self) -> tuple[object, ...]:
        """Pickles as a plain list handed to the constructor (no ``append`` calls)."""
        return FrozenList, (list(self),)

    def __repr__(self) -> str:
        return f"FrozenList({list(self)!r})"


_SCALARS = frozenset({str, int, float, bool, type(None)})


def freeze(value: Any) -> Any:
    """``value`` with every dict, list and tuple in it made immutable (iterative, any depth).

    Scalars come back as they are; lists become :class:`FrozenList`, dicts :class:`FrozenDict`,
    tuples stay tuples of frozen items. Other objects are returned unchanged.
    """
    kind: type = type(cast("object", value))
    if kind in _SCALARS or kind is FrozenDict or kind is FrozenList:
        return value
    # Post-order over containers with an explicit stack: no recursion on deep values.
    done: dict[int, object] = {}
    keep: list[object] = []  # holds the originals, so their ids stay theirs
    stack: list[tuple[object, bool]] = [(value, False)]
    while stack:
        item, ready = stack.pop()
        if id(item) in done or not isinstance(item, dict | list | tuple):
            continue
        mapping = cast("dict[object, object]", item) if isinstance(item, dict) else None
        seq = cast("list[object] | tuple[object, ...]", item)
        children = list(mapping.values()) if mapping is not None else list(seq)
        if not ready:
            stack.append((seq, True))
            stack.extend((c, False) for c in children if type(c) not in _SCALARS)
            continue
        if mapping is not None:
            frozen: object = FrozenDict({k: done.get(id(v), v) for k, v in mapping.items()})
        elif isinstance(seq, list):
            frozen = FrozenList(done.get(id(c), c) for c in children)
        else:
            frozen = tuple(done.get(id(c), c) for c in children)
        done[id(seq)] = frozen
        keep.append(seq)
    return done.get(id(value), value)


def freeze_row(args: list[Any] | tuple[Any, ...]) -> tuple[Any, ...]:
    """A row of arguments as a tuple of frozen values (the common all-scalar row is cheap)."""
    for x in args:
        if type(x) not in _SCALARS:
            return tuple(freeze(v) for v in args)
    return tuple(args)
