"""The exception tree of aioworkflow.

Every error aioworkflow raises on purpose derives from :class:`AioWorkflowError`, so one
``except AioWorkflowError`` catches them all. Where a caller would naturally catch a standard
exception, the class mixes it in (``GraphError`` is a ``ValueError``, ``WorkflowTimeout`` a
``TimeoutError``, ``WorkflowNotFound`` a ``LookupError``).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AioWorkflowError",
    "ConfigurationError",
    "DecodeError",
    "GraphError",
    "MessageTooLarge",
    "ResultTooLarge",
    "ScriptError",
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


class AioWorkflowError(Exception):
    """Root of every error raised by aioworkflow."""


class GraphError(AioWorkflowError, ValueError):
    """A canvas cannot be compiled.

    Raised by the canvas builders (``Chain``, ``Group``, ``WithDelay``, ``Graph.add``) and by
    ``compile()`` before anything is stored: a leaf that is not a dramatiq message, a bad delay,
    a cycle, an edge to an unknown node, a node reference from another graph, or an argument
    that cannot be encoded as JSON. The message names the offending step.
    """


class DecodeError(AioWorkflowError):
    """Stored bytes (a DAG blob, a stored result) cannot be decoded.

    Raised by ``Dag.decode`` and the result codec for truncated, corrupt or unknown-version data.
    ``data`` keeps the offending bytes; ``__cause__`` keeps the underlying error.
    """

    def __init__(self, message: str, data: bytes = b"") -> None:
        super().__init__(message)
        self.data: bytes = data


class StoreError(AioWorkflowError):
    """The workflow store failed (raised by ``RedisStore`` and ``MemoryStore`` operations)."""


class StoreUnavailable(StoreError):
    """The store cannot serve the call right now, but will again: retry it.

    The base of every transient store error. Raised by ``RedisStore`` operations (and caught
    by the worker and the client, which retry with back-off) for a connection that failed or
    timed out (:class:`StoreConnectionError`) and for error replies of a server that is up but
    refuses for a while (:class:`StoreBusy`). Nothing was changed by the failed command, or
    the call is idempotent, so retrying it is safe.
    """


class StoreConnectionError(StoreUnavailable, ConnectionError):
    """The store's server could not be reached, timed out or dropped the connection.

    Raised by ``RedisStore`` operations (redis-py's ``ConnectionError``/``TimeoutError``, a
    broken socket on the worker's wire path, a ``-LOADING`` reply). Transient: a :class:`StoreUnavailable`.
    """


class StoreBusy(StoreUnavailable):
    """The store's server is up but answered with a transient error reply.

    Raised by ``RedisStore`` operations when Redis replies ``-OOM`` (``maxmemory`` reached
    with ``noeviction``), ``-BUSY`` (another client's long script), ``-READONLY`` (a demoted
    primary), ``-MASTERDOWN``, ``-NOREPLICAS``, ``-TRYAGAIN``, ``-CLUSTERDOWN``, ``-MISCONF``,
    or ``-NOSCRIPT`` once reloading the script did not help (``-LOADING``, a restarted server
    reading its data, is a :class:`StoreConnectionError`, as redis-py has it). ``code`` is the reply's error code (``"OOM"``, ``"BUSY"``...).
    A script that got such a reply wrote nothing (Redis checks before it runs, and the
    scripts read and validate everything before their first write).
    """

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class ScriptError(StoreError):
    """A Lua script or command of the store failed on the server: a bug, not a passing state.

    Raised by ``RedisStore`` operations for an error reply that is not transient (a script's
    own ``error()``, a foreign key type, a syntax error); the message names the Lua file and
    line. Never retried.
    """


class ConfigurationError(AioWorkflowError):
    """aioworkflow is not set up: no ``WorkflowMiddleware`` on the broker, no store, and so on."""


class WorkflowExists(StoreError):
    """``run()`` was given an ``id=`` that a stored workflow already uses; nothing was written."""


class WorkflowNotFound(AioWorkflowError, LookupError):
    """No workflow with this id exists in the store (never created, or expired)."""


class WorkflowTimeout(AioWorkflowError, TimeoutError):
    """``handle.wait()`` or ``handle.result()`` ran out of time before the workflow ended."""


class WorkflowFailed(AioWorkflowError):
    """The workflow ended in the FAILED state.

    Raised by ``handle.result()``. Carries the failed node's index, actor name, exception type
    and message as recorded by the worker.
    """

    def __init__(
        self,
        workflow_id: str,
        *,
        node: int | None = None,
        actor: str | None = None,
        exc_type: str | None = None,
        exc_message: str | None = None,
    ) -> None:
        detail = f"node {node} ({actor}) raised {exc_type}: {exc_message}"
        super().__init__(f"workflow {workflow_id} failed: {detail}")
        self.workflow_id: str = workflow_id
        self.node: int | None = node
        self.actor: str | None = actor
        self.exc_type: str | None = exc_type
        self.exc_message: str | None = exc_message


class WorkflowCancelled(AioWorkflowError):
    """The workflow was cancelled; raised by ``handle.result()``."""

    def __init__(self, workflow_id: str) -> None:
        super().__init__(f"workflow {workflow_id} was cancelled")
        self.workflow_id: str = workflow_id


class MessageTooLarge(GraphError):
    """A node's arguments encode to more than the workflow's message size cap.

    Raised by ``Workflow.run()`` before anything is stored, naming the node and its actor.
    """

    def __init__(self, node: int, actor: str, size: int, limit: int) -> None:
        super().__init__(
            f"node {node} ({actor}): arguments of {size} bytes exceed the message cap of "
            f"{limit} bytes (Workflow(max_message_bytes=...)); pass a reference instead"
        )
        self.node: int = node
        self.actor: str = actor
        self.size: int = size
        self.limit: int = limit


class WorkflowTooLarge(GraphError):
    """A canvas has more task nodes than the workflow's limit.

    Raised by ``compile(canvas, max_nodes=...)`` while counting the canvas's leaves, before
    any array of the DAG is built and before anything is stored. ``count`` is the number of
    task nodes the canvas would compile to (a leaf reached twice through a shared sub-canvas
    counts twice), ``limit`` the ``max_nodes`` in force.
    """

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(
            f"the workflow has {count:,} task nodes, more than the limit of {limit:,} "
            "(compile(max_nodes=...))"
        )
        self.count: int = count
        self.limit: int = limit


class ResultTooLarge(AioWorkflowError):
    """A node's result exceeds the store's result size cap.

    Raised on the worker; the node fails with this error so the workflow reports it.
    """

    def __init__(self, size: int, limit: int, **extra: Any) -> None:
        super().__init__(f"result of {size} bytes exceeds the cap of {limit} bytes")
        self.size: int = size
        self.limit: int = limit
        self.extra: dict[str, Any] = extra
