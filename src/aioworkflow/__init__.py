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
from ._listing import list_workflows, list_workflows_sync
from ._middleware import WorkflowMiddleware
from ._progress import report_progress
from ._status import Event, Progress, RunningNode, State, Transition, WorkflowStatus
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
    WorkflowTooLarge,
)

# One statement per group (each sorted, as ruff's RUF022 wants; pyright reads ``+=``).
# builders: describe work and compile it
__all__ = ["Chain", "Graph", "Group", "NodeRef", "WithDelay", "compile"]
# client: start workflows and follow them
__all__ += ["SyncWorkflowHandle", "Workflow", "WorkflowHandle"]
# integration: dramatiq middleware, encoder and stores
__all__ += ["LZ4JSONEncoder", "MemoryStore", "RedisStore", "WorkflowMiddleware"]
# values: what the calls above return
__all__ += ["Dag", "Event", "Node", "State", "Transition", "WorkflowStatus"]
# observability
__all__ += [
    "Progress",
    "RunningNode",
    "list_workflows",
    "list_workflows_sync",
    "report_progress",
]
# errors: one tree rooted at AioWorkflowError (all of aioworkflow.errors but ScriptError)
__all__ += [
    "AioWorkflowError",
    "ConfigurationError",
    "DecodeError",
    "GraphError",
    "MessageTooLarge",
    "ResultTooLarge",
    "StoreBusy",
    "StoreConnectionError",
    "StoreError",
    "StoreUnavailable",
    "WorkflowCancelled",
    "WorkflowExists",
    "WorkflowFailed",
    "WorkflowNotFound",
    "WorkflowTimeout",
    "WorkflowTooLarge",
]
