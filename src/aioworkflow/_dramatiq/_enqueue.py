"""Building dramatiq messages for released nodes and callbacks, and sending them (ready mode)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

import dramatiq
from dramatiq.encoder import JSONEncoder

from aioworkflow._compiler import INTERNAL_OPTIONS
from aioworkflow._encoder import LZ4JSONEncoder
from aioworkflow._plan import OPTION, Callback
from aioworkflow._upload import message_ref, new_push_id

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from aioworkflow._store._base import Loaded

__all__ = [
    "as_callback",
    "build_message",
    "enqueue_after_barrier",
    "enqueue_released",
    "fault_after_barrier",
    "json_encoder_in_use",
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
    return type(dramatiq.get_encoder()) in (JSONEncoder, LZ4JSONEncoder)


def as_callback(message: Any) -> Callback | None:
    """A user's ``on_success``/``on_failure`` message as a stored callback."""
    if message is None:
        return None
    msg: dramatiq.Message[Any] = message
    options = {k: v for k, v in msg.options.items() if k not in INTERNAL_OPTIONS}
    return Callback(
        msg.actor_name, msg.queue_name, tuple(msg.args), dict(msg.kwargs), options, msg.message_id
    )


def build_message(
    workflow_id: str, loaded: Loaded, key: int | str
) -> tuple[dramatiq.Message[Any], int | None]:
    """The dramatiq message (and delay) for a released node or callback.

    It keeps the ``message_id`` of the message the user built (a fresh one when the workflow
    was stored without it) and gets a fresh push id in its ref: the claim key that tells a
    re-send (reconciler, retry, resume) from a redelivery of this very message. Its
    ``message_timestamp`` is now, so ``max_age`` counts from the node's enqueue.
    """
    push = new_push_id()
    if isinstance(key, str):
        fields: dict[str, Any] = {**loaded.callbacks[key]}
        fields["args"] = tuple(fields["args"])
        fields["options"] = {
            **fields["options"],
            OPTION: message_ref(workflow_id, key, loaded.token, push),
        }
        return dramatiq.Message[Any](**fields), None
    node = loaded.dag.node(key)
    fields = {
        "queue_name": node.queue_name,
        "actor_name": node.actor_name,
        "args": node.args,
        "kwargs": node.kwargs,
        "options": {**node.options, OPTION: message_ref(workflow_id, key, loaded.token, push)},
    }
    if node.message_id:  # else dramatiq draws one (a DAG stored before ids were kept)
        fields["message_id"] = node.message_id
    msg = dramatiq.Message[Any](**fields)
    return msg, node.delay or None


def enqueue_released(
    broker: dramatiq.Broker, workflow_id: str, loaded: Loaded, released: Iterable[int | str]
) -> int:
    """Enqueue released nodes through the broker (ready mode). Returns how many were sent.

    A failure is logged, not raised: the entries stay in the ready set and the reconciler
    sends them later.
    """
    # dramatiq annotates ``enqueue`` with a bare ``Message``: give it its parameter's type
    enqueue = cast("Callable[..., object]", broker.enqueue)  # pyright: ignore[reportUnknownMemberType]
    sent = 0
    for key in released:
        try:
            msg, delay = build_message(workflow_id, loaded, key)
            enqueue(msg, delay=delay)
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
