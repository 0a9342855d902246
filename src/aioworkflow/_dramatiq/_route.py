"""How a workflow's released nodes reach dramatiq: a ``Route``, chosen once per loaded workflow.

A workflow is stored in one of two modes (``Loaded.mode``), fixed when it is submitted:

* direct (``DirectRoute``): the broker is a RedisBroker on the store's Redis and messages are
  plain JSON, so the scripts push released nodes into dramatiq's queues themselves, in the same
  atomic step as the release. Callers pass the queue keys and send nothing; a completion may
  also ack its delivery (``ack_for``).
* ready (``ReadyRoute``): any other broker. The scripts put released nodes in the workflow's
  ready set and return them; the caller enqueues them through the broker, and the reconciler
  re-sends what nobody claimed.

``route_for`` is the only place that reads the mode; everything else asks the route.
"""

from __future__ import annotations

import abc
import logging
from typing import TYPE_CHECKING, final

import anyio.to_thread

from ._enqueue import enqueue_after_barrier, enqueue_released, json_encoder_in_use
from ._redis_broker import namespace_of, queue_keys, shares_store_redis

if TYPE_CHECKING:
    from collections.abc import Sequence

    import dramatiq
    from dramatiq.broker import MessageProxy

    from aioworkflow._store._base import BrokerAck, Loaded, StoreBackend

    from ._redis_broker import AckShortcut

logger = logging.getLogger("aioworkflow")

__all__ = ["DirectRoute", "ReadyRoute", "Route", "direct_mode", "route_for"]

#: ``Loaded.mode`` of a direct-mode workflow (the store's ``mode`` field; anything else: ready).
_DIRECT = "d"


class Route(abc.ABC):
    """What the worker, the reconciler and the client do with what a script released."""

    __slots__ = ("queue_keys",)

    def __init__(self, queue_keys: list[str]) -> None:
        #: KEYS the scripts need to enqueue by themselves (empty: they do not).
        self.queue_keys = queue_keys

    @abc.abstractmethod
    def ack_for(self, message: MessageProxy) -> BrokerAck | None:
        """What ``complete.lua`` needs to ack ``message``'s delivery (None: dramatiq acks)."""

    @abc.abstractmethod
    def after_barrier(self, released: Sequence[int | str]) -> None:
        """Send what a completion or failure script just released."""

    @abc.abstractmethod
    def send(self, released: Sequence[int | str]) -> None:
        """Send what a control or reconcile script released (blocking)."""

    @abc.abstractmethod
    async def send_async(self, released: Sequence[int | str]) -> None:
        """``send`` from the event loop, never blocking it."""


@final
class DirectRoute(Route):
    """The scripts have already enqueued everything they released: nothing is sent."""

    __slots__ = ("_acks", "_broker")

    def __init__(
        self, queue_keys: list[str], broker: dramatiq.Broker, acks: AckShortcut | None
    ) -> None:
        super().__init__(queue_keys)
        self._broker = broker
        self._acks = acks

    def ack_for(self, message: MessageProxy) -> BrokerAck | None:
        """See :meth:`Route.ack_for`: possible once the worker installed the shortcut."""
        return None if self._acks is None else self._acks.ack_for(self._broker, message)

    def after_barrier(self, released: Sequence[int | str]) -> None:
        """Nothing to send (see :meth:`Route.after_barrier`)."""

    def send(self, released: Sequence[int | str]) -> None:
        """Nothing to send (see :meth:`Route.send`)."""

    async def send_async(self, released: Sequence[int | str]) -> None:
        """Nothing to send (see :meth:`Route.send_async`)."""


@final
class ReadyRoute(Route):
    """Released nodes wait in the ready set until they are enqueued through the broker."""

    __slots__ = ("_broker", "_loaded", "_workflow_id")

    def __init__(self, broker: dramatiq.Broker, workflow_id: str, loaded: Loaded) -> None:
        super().__init__([])
        self._broker = broker
        self._workflow_id = workflow_id
        self._loaded = loaded

    def ack_for(self, message: MessageProxy) -> BrokerAck | None:
        """Never: the broker is not the store's Redis (see :meth:`Route.ack_for`)."""
        return None

    def after_barrier(self, released: Sequence[int | str]) -> None:
        """See :meth:`Route.after_barrier` (goes through the test-only fault seam)."""
        if released:
            enqueue_after_barrier(self._broker, self._workflow_id, self._loaded, released)

    def send(self, released: Sequence[int | str]) -> None:
        """See :meth:`Route.send`: failures are logged and left to the reconciler."""
        if released:
            enqueue_released(self._broker, self._workflow_id, self._loaded, released)

    async def send_async(self, released: Sequence[int | str]) -> None:
        """See :meth:`Route.send_async`: ``broker.enqueue`` blocks, so it runs in a thread."""
        if released:
            await anyio.to_thread.run_sync(self.send, released)


def route_for(
    broker: dramatiq.Broker, workflow_id: str, loaded: Loaded, acks: AckShortcut | None = None
) -> Route:
    """The route of a loaded workflow on ``broker`` (``acks``: the worker's ack shortcut)."""
    if loaded.mode == _DIRECT:
        return DirectRoute(queue_keys(namespace_of(broker), loaded.slots), broker, acks)
    return ReadyRoute(broker, workflow_id, loaded)


def direct_mode(store: StoreBackend, broker: dramatiq.Broker) -> bool:
    """Whether new workflows on this broker and store use direct (atomic) enqueue."""
    if not shares_store_redis(store, broker):
        return False
    if json_encoder_in_use():
        return True
    _explain_fallback()
    return False


_explained: set[type] = set()


def _explain_fallback() -> None:
    """Say once per encoder class why a RedisBroker on the store's Redis is in ready mode."""
    import dramatiq

    kind = type(dramatiq.get_encoder())
    if kind in _explained:
        return
    _explained.add(kind)
    logger.warning(
        "aioworkflow: dramatiq's encoder is %s.%s, whose payloads the Lua scripts cannot write, "
        "so workflows use ready mode (enqueue through the broker, one more round trip per "
        "release) instead of direct enqueue; dramatiq's JSONEncoder or "
        "aioworkflow.LZ4JSONEncoder keep the direct path",
        kind.__module__,
        kind.__qualname__,
    )
