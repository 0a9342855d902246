"""The two driver interfaces every store provides, and what they share.

``Store`` (sync) serves the middleware in dramatiq's worker threads; ``AsyncStore`` serves the
client in the user's event loop. A backend (``RedisStore``, ``MemoryStore``) hands out both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast, final

from aioworkflow._machine import Mode
from aioworkflow._protocol import BrokerAck
from aioworkflow.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aioworkflow._dag import Dag
    from aioworkflow._protocol import Claim, Completion
    from aioworkflow._status import Event, RunningNode
    from aioworkflow._upload import Upload

__all__ = [
    "DEFAULT_FAILED_RETENTION",
    "DEFAULT_RETENTION",
    "AsyncStore",
    "BrokerAck",
    "Loaded",
    "Store",
    "StoreBackend",
    "retention_ms",
]

#: Seconds a finished workflow's keys are kept (one day).
DEFAULT_RETENTION: float = 86_400
#: Seconds a FAILED workflow's keys are kept (seven days): it can still be retried, and a
#: failure found on Monday morning should still be retryable after a weekend.
DEFAULT_FAILED_RETENTION: float = 7 * 86_400


def retention_ms(name: str, seconds: float) -> int:
    """A retention in seconds as whole milliseconds (at least 1).

    Raises:
        ConfigurationError: ``seconds`` is not a positive finite number (zero would delete a
            workflow the moment it ends, before anyone saw its result; infinity or NaN cannot
            be a key TTL).
    """
    value = cast("object", seconds)  # callers are not always typed: check the runtime type
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(
            f"{name} must be a positive finite number of seconds, not {seconds!r}"
        )
    return max(1, int(seconds * 1000))


@final
@dataclass(frozen=True, slots=True)
class Loaded:
    """What a worker or client needs to know about a stored workflow (cached per process)."""

    dag: Dag
    #: A :class:`~aioworkflow._machine.Mode` (given as one or as its value): DIRECT ("d"),
    #: scripts enqueue into dramatiq's Redis queues themselves; READY ("r"), they put released
    #: nodes in the ready set.
    mode: str
    slots: list[str]
    #: Callback message fields by ``CallbackKind`` ("s"/"f").
    callbacks: dict[str, dict[str, Any]] = field(default_factory=dict[str, dict[str, Any]])
    #: W3C traceparent of the workflow's root span ("": not traced; see ``_observe``).
    trace: str = ""
    #: The submission's message token ("" for a workflow stored before tokens existed).
    token: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", Mode(self.mode))


class Store(Protocol):
    """Sync driver: the operations a worker performs, one script call each."""

    def load(self, workflow_id: str) -> Loaded | None:
        """Fetch and decode a workflow's DAG and dispatch settings (None: no such workflow)."""
        ...

    def claim(
        self,
        workflow_id: str,
        node: int | str,
        message_id: str,
        pipe_nodes: Sequence[int],
        token: str = "",
        attempt: int = 1,
    ) -> Claim:
        """Run ``claim.lua`` for a delivery about to start (``token``: the message's;
        ``attempt``: dramatiq's retries + 1, logged with the ``node_started`` event)."""
        ...

    def progress(
        self,
        workflow_id: str,
        node: int,
        message_id: str,
        token: str,
        progress: tuple[float, float | None, str | None],
    ) -> bool:
        """Run ``progress.lua``: log ``(done, total, note)`` of a running node (False: not
        logged, the node is not running under this delivery any more)."""
        ...

    def complete(
        self,
        workflow_id: str,
        node: int,
        result: bytes | None,
        queue_keys: list[str],
        ack: BrokerAck | None = None,
        token: str = "",
    ) -> Completion:
        """Run ``complete.lua``; ``result`` is stored when not None; ``ack`` acks the delivery."""
        ...

    def fail(
        self,
        workflow_id: str,
        node: int,
        info: tuple[str, str, str],
        queue_keys: list[str],
        token: str = "",
    ) -> Completion:
        """Run ``fail.lua`` with (actor, exception type, exception message)."""
        ...

    def reconcile(
        self, workflow_id: str, age_ms: int, limit: int, queue_keys: list[str]
    ) -> Completion:
        """Run ``reconcile.lua``."""
        ...

    def active(self, limit: int) -> list[str]:
        """Ids of workflows the reconciler should look at, oldest first."""
        ...

    def forget(self, workflow_id: str) -> None:
        """Drop a workflow from the reconciler's index."""
        ...


class AsyncStore(Protocol):
    """Async driver: the operations of the client."""

    async def submit(self, workflow_id: str, upload: Upload, queue_keys: list[str]) -> Completion:
        """Store a new workflow and start it (raises WorkflowExists for a taken id)."""
        ...

    async def meta(self, workflow_id: str) -> tuple[dict[str, str], int] | None:
        """The workflow's meta hash and its count of running nodes (None: no such workflow)."""
        ...

    async def index_page(
        self, cursor: tuple[int, str] | None, since_ms: int, count: int
    ) -> list[tuple[int, str, tuple[dict[str, str], int] | None]]:
        """Up to ``count`` workflows submitted at ``since_ms`` or later, newest first, after
        ``cursor`` (the (submit ms, id) of the previous page's last entry), each with its meta
        and running count (None: it expired; the index forgets it)."""
        ...

    async def running_nodes(
        self, workflow_id: str, loaded: Loaded | None = None
    ) -> tuple[RunningNode, ...]:
        """The workflow's running nodes, by node index (empty: none or no such workflow);
        ``loaded`` (the workflow's, if the caller has it) names their actors."""
        ...

    async def control(self, op: str, workflow_id: str, queue_keys: list[str]) -> Completion:
        """Run one of the control scripts: cancel, pause, resume, retry."""
        ...

    async def load(self, workflow_id: str) -> Loaded | None:
        """As :meth:`Store.load`."""
        ...

    async def results(self, workflow_id: str, nodes: Sequence[int]) -> list[bytes | None]:
        """Stored result blobs of ``nodes`` (None where missing)."""
        ...

    async def events(
        self,
        workflow_id: str,
        after: str,
        block_ms: int | None,
        count: int = 1000,
        *,
        states_only: bool = False,
    ) -> list[Event]:
        """Events after id ``after`` ("0" for all); block up to ``block_ms`` when there are none.

        With ``states_only``, only workflow state changes (a separate, short stream that
        waiters block on, so they are not woken by every node event).
        """
        ...

    async def last_event_id(self, workflow_id: str, *, states_only: bool = False) -> str:
        """Id of the newest event (of the state-change stream with ``states_only``), "0" if none."""
        ...


class StoreBackend(Protocol):
    """A store as users configure it: hands out the two drivers."""

    #: Milliseconds a finished workflow's keys are kept.
    retention_ms: int
    #: Milliseconds a FAILED workflow's keys are kept (it stays retryable meanwhile).
    failed_retention_ms: int
    #: Largest stored result in bytes; a bigger one fails its node with ResultTooLarge.
    result_limit: int

    @property
    def sync(self) -> Store:
        """The sync driver (for worker threads)."""
        ...

    def aio(self) -> AsyncStore:
        """The async driver bound to the running event loop."""
        ...

    async def aclose(self) -> None:
        """Close the async driver of the running event loop."""
        ...

    def close(self) -> None:
        """Close the sync driver."""
        ...

    def shares_server(self, client: Any) -> bool:
        """Whether a sync redis-py ``client`` reaches this store's Redis (so scripts can write
        into the keys it reads: direct enqueue)."""
        ...
