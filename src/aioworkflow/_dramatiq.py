"""Small bridges between the pure core and dramatiq: building and enqueueing messages."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import dramatiq
from dramatiq.encoder import JSONEncoder

from ._plan import OPTION, Callback

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from ._store._base import Loaded, StoreBackend

__all__ = [
    "as_callback",
    "direct_mode",
    "enqueue_after_barrier",
    "enqueue_released",
    "find_store",
    "queue_keys_for",
]

logger = logging.getLogger("aioworkflow")

#: Test-only fault seam; None (the default) costs one global read per ready-mode release.
#: When set, ``enqueue_after_barrier`` calls it with the workflow id and the keys that a
#: completion or failure script has just released (its transaction is committed), before
#: anything is sent to the broker, and enqueues only the keys it returns. Returning fewer (or
#: raising) is a worker dying between the barrier and the broker: the keys it dropped stay in
#: the ready set and only the reconciler can send them.
fault_after_barrier: Callable[[str, tuple[int | str, ...]], Iterable[int | str]] | None = None


def json_encoder_in_use() -> bool:
    """Whether dramatiq's global encoder reads the plain JSON payloads the scripts write."""
    from ._encoder import LZ4JSONEncoder

    return type(dramatiq.get_encoder()) in (JSONEncoder, LZ4JSONEncoder)


def queue_keys(namespace: str, slots: list[str]) -> list[str]:
    """dramatiq RedisBroker keys for each queue slot: the id list, then the message hash."""
    out: list[str] = []
    for queue in slots:
        out += [f"{namespace}:{queue}", f"{namespace}:{queue}.msgs"]
    return out


def shares_store_redis(store: StoreBackend, broker: dramatiq.Broker) -> bool:
    """Whether ``broker`` is a RedisBroker on the store's very Redis."""
    client = getattr(broker, "client", None)
    if not hasattr(broker, "namespace") or client is None:
        return False
    return store.shares_server(client)


def direct_mode(store: StoreBackend, broker: dramatiq.Broker) -> bool:
    """Whether new workflows on this broker and store use direct (atomic) enqueue."""
    return json_encoder_in_use() and shares_store_redis(store, broker)


def queue_keys_for(broker: dramatiq.Broker, loaded: Loaded) -> list[str]:
    """KEYS for the queue slots of a direct-mode workflow (empty in ready mode)."""
    if loaded.mode != "d":
        return []
    return queue_keys(getattr(broker, "namespace", "dramatiq"), loaded.slots)


def as_callback(message: Any) -> Callback | None:
    """A user's ``on_success``/``on_failure`` message as a stored callback."""
    if message is None:
        return None
    from ._compiler import INTERNAL_OPTIONS

    options = {k: v for k, v in message.options.items() if k not in INTERNAL_OPTIONS}
    return Callback(
        message.actor_name, message.queue_name, tuple(message.args), dict(message.kwargs), options
    )


def build_message(
    workflow_id: str, loaded: Loaded, key: int | str
) -> tuple[dramatiq.Message[Any], int | None]:
    """The dramatiq message (and delay) for a released node or callback."""
    if isinstance(key, str):
        return dramatiq.Message(
            **{**loaded.callbacks[key], "args": tuple(loaded.callbacks[key]["args"])}
        ), None
    node = loaded.dag.node(key)
    msg: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=node.queue_name,
        actor_name=node.actor_name,
        args=node.args,
        kwargs=node.kwargs,
        options={**node.options, OPTION: [workflow_id, key]},
    )
    return msg, node.delay or None


def enqueue_released(
    broker: dramatiq.Broker, workflow_id: str, loaded: Loaded, released: Iterable[int | str]
) -> int:
    """Enqueue released nodes through the broker (ready mode). Returns how many were sent.

    A failure is logged, not raised: the entries stay in the ready set and the reconciler
    sends them later.
    """
    sent = 0
    for key in released:
        try:
            msg, delay = build_message(workflow_id, loaded, key)
            broker.enqueue(msg, delay=delay)
            sent += 1
        except Exception:
            logger.exception(
                "Could not enqueue node %s of workflow %s; the reconciler will retry it.",
                key,
                workflow_id,
            )
    return sent


def enqueue_after_barrier(
    broker: dramatiq.Broker, workflow_id: str, loaded: Loaded, released: Iterable[int | str]
) -> int:
    """``enqueue_released`` for what a barrier script just released (through the fault seam)."""
    if fault_after_barrier is not None:
        released = tuple(fault_after_barrier(workflow_id, tuple(released)))
    return enqueue_released(broker, workflow_id, loaded, released)


def find_store(broker: dramatiq.Broker) -> StoreBackend | None:
    """The store of the broker's WorkflowMiddleware, if it has one."""
    from ._middleware import WorkflowMiddleware

    for m in broker.middleware:
        if isinstance(m, WorkflowMiddleware):
            return m.store
    return None
