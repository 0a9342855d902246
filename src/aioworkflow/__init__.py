"""aioworkflow: asyncio-native workflows (chains, groups, DAGs) for dramatiq.

Describe work as nested ``Chain``/``Group``/``WithDelay``/``Graph`` steps of dramatiq messages,
start it with ``await Workflow(...).run()``; ``WorkflowMiddleware`` on the workers releases each
step exactly once when its predecessors have finished.
"""

from __future__ import annotations

from ._client import SyncWorkflowHandle, Workflow, WorkflowHandle
from ._compiler import compile
from ._dag import Dag, Node
from ._encoder import LZ4JSONEncoder
from ._graph import Chain, Graph, Group, NodeRef, WithDelay
from ._middleware import WorkflowMiddleware
from ._status import Event, State, Transition, WorkflowStatus
from ._store import MemoryStore, RedisStore
from .errors import (
    AioWorkflowError,
    ConfigurationError,
    DecodeError,
    GraphError,
    MessageTooLarge,
    ResultTooLarge,
    StoreBusy,
    StoreConnectionError,
    StoreError,
    StoreUnavailable,
    WorkflowCancelled,
    WorkflowExists,
    WorkflowFailed,
    WorkflowNotFound,
    WorkflowTimeout,
)

__all__ = [
    # errors
    "AioWorkflowError",
    # builders
    "Chain",
    "ConfigurationError",
    "Dag",
    "DecodeError",
    "Event",
    "Graph",
    "GraphError",
    "Group",
    "LZ4JSONEncoder",
    "MemoryStore",
    "MessageTooLarge",
    "Node",
    "NodeRef",
    "RedisStore",
    "ResultTooLarge",
    "State",
    "StoreBusy",
    "StoreConnectionError",
    "StoreError",
    "StoreUnavailable",
    "SyncWorkflowHandle",
    "Transition",
    "WithDelay",
    # client
    "Workflow",
    "WorkflowCancelled",
    "WorkflowExists",
    "WorkflowFailed",
    "WorkflowHandle",
    # integration
    "WorkflowMiddleware",
    "WorkflowNotFound",
    "WorkflowStatus",
    "WorkflowTimeout",
    "compile",
]
