"""Per-process cache of what workers know about a workflow: its DAG, its route, what to keep."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, final

from ._dramatiq import route_for

if TYPE_CHECKING:
    import dramatiq

    from ._dramatiq import AckShortcut, Route
    from ._store._base import Loaded, StoreBackend

__all__ = ["ContextCache", "WorkflowContext"]


@final
@dataclass(frozen=True, slots=True)
class WorkflowContext:
    """A loaded workflow with its route, built once and shared by the worker's threads."""

    loaded: Loaded
    route: Route
    #: Nodes whose results are stored (a successor or the caller reads them).
    keep: frozenset[int]


@final
class ContextCache:
    """A thread-safe LRU of ``WorkflowContext`` by workflow id, loaded on a miss.

    Args:
        store: where workflows are loaded from.
        size: how many contexts to keep.
        acks: the worker's ack shortcut, handed to the direct routes.
    """

    def __init__(self, store: StoreBackend, size: int, acks: AckShortcut) -> None:
        self._store = store
        self._size = size
        self._acks = acks
        self._cache: OrderedDict[str, WorkflowContext] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, broker: dramatiq.Broker, workflow_id: str) -> WorkflowContext | None:
        """The workflow's context (None: no such workflow). May raise StoreError."""
        with self._lock:
            ctx = self._cache.get(workflow_id)
            if ctx is not None:
                self._cache.move_to_end(workflow_id)
                return ctx
        loaded = self._store.sync.load(workflow_id)
        if loaded is None:
            return None
        route = route_for(broker, workflow_id, loaded, self._acks)
        ctx = WorkflowContext(loaded, route, loaded.dag.keep_results())
        with self._lock:
            self._cache[workflow_id] = ctx
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return ctx

    def forget(self, workflow_id: str) -> None:
        """Drop a workflow that vanished (expired or deleted)."""
        with self._lock:
            self._cache.pop(workflow_id, None)
