"""What aioworkflow knows about dramatiq's RedisBroker, and the one place it is written down.

The RedisBroker keeps, under its ``namespace``:

* ``<ns>:<queue>``: the list of message ids waiting in a queue, and ``<ns>:<queue>.msgs``: the
  hash of their payloads. Direct-mode scripts push released nodes into both (``queue_keys``),
  and ring ``<ns>:<queue>.bell`` (ours, not dramatiq's: ``_bell``) to wake idle consumers.
* ``<ns>:__acks__.<broker_id>.<queue>``: the ids a worker process fetched and has not acked;
  ``<ns>:__heartbeats__``: the zset of worker processes' last heartbeats. ``complete.lua``
  acks a delivery through these (``AckShortcut``), exactly as dramatiq's ``ack`` command would.

The store never builds these names: it receives them as opaque keys.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast, final

from dramatiq.errors import BrokerConnectionError

from aioworkflow._store._base import BrokerAck
from aioworkflow._store._redis import map_exceptions
from aioworkflow.errors import StoreUnavailable

from ._bell import BellConsumer, Doorbell, bell_key

if TYPE_CHECKING:
    from collections.abc import Callable

    import dramatiq
    from dramatiq.broker import Consumer, MessageProxy

    from aioworkflow._store._base import StoreBackend

__all__ = ["AckShortcut", "mark_acked", "namespace_of", "queue_keys", "shares_store_redis"]

#: RedisBroker's default namespace (used for brokers that do not say).
DEFAULT_NAMESPACE = "dramatiq"
#: Set on a MessageProxy whose delivery ``complete.lua`` already acked.
_ACKED = "_aioworkflow_acked"


def namespace_of(broker: dramatiq.Broker) -> str:
    """The key prefix of ``broker``'s queues (a RedisBroker's ``namespace``)."""
    return str(getattr(broker, "namespace", DEFAULT_NAMESPACE))


def queue_keys(namespace: str, slots: list[str]) -> list[str]:
    """The keys a push needs for each queue slot: the id list, the message hash, the bell."""
    out: list[str] = []
    for queue in slots:
        out += [f"{namespace}:{queue}", f"{namespace}:{queue}.msgs", bell_key(namespace, queue)]
    return out


def shares_store_redis(store: StoreBackend, broker: dramatiq.Broker) -> bool:
    """Whether ``broker`` is a RedisBroker on the store's very Redis."""
    client: object = getattr(broker, "client", None)
    if not hasattr(broker, "namespace") or client is None:
        return False
    return store.shares_server(client)


def mark_acked(message: MessageProxy) -> None:
    """Record that ``complete.lua`` acked ``message``'s delivery (its consumer must not)."""
    setattr(message, _ACKED, True)


@final
class AckShortcut:
    """Lets ``complete.lua`` ack a RedisBroker delivery in the script that counts it.

    ``install`` wraps the broker's consumers so that they skip their own ack of the deliveries
    marked with :func:`mark_acked`; until then (or on another broker) ``ack_for`` says None and
    dramatiq acks as usual.
    """

    def __init__(self) -> None:
        self._broker: dramatiq.Broker | None = None
        self._broker_id = ""
        self._namespace = DEFAULT_NAMESPACE
        # queue name -> (ack set, .msgs hash, heartbeats): built once per queue, not per task
        self._keys: dict[str, tuple[str, str, str]] = {}

    def install(self, store: StoreBackend, broker: dramatiq.Broker) -> bool:
        """Enable the shortcut (and the doorbell) when ``broker`` is a RedisBroker on the store's Redis.

        Returns:
            Whether this call enabled it (once per process: a second call does nothing).
        """
        if self._broker is not None or not shares_store_redis(store, broker):
            return False
        _skip_acked_acks(broker)
        self._broker_id = str(getattr(broker, "broker_id", ""))
        self._namespace = namespace_of(broker)
        self._broker = broker
        return True

    def ack_for(self, broker: dramatiq.Broker, message: MessageProxy) -> BrokerAck | None:
        """What ``complete.lua`` needs to ack ``message`` itself (None: the broker acks)."""
        redis_id: object = message.options.get("redis_message_id")
        if broker is not self._broker or not isinstance(redis_id, str):
            return None
        queue: str = message.queue_name
        keys = self._keys.get(queue)
        if keys is None:
            ns = self._namespace
            keys = (
                f"{ns}:__acks__.{self._broker_id}.{queue}",
                f"{ns}:{queue}.msgs",
                f"{ns}:__heartbeats__",
            )
            self._keys[queue] = keys  # racing threads write the same value
        return BrokerAck(keys, redis_id, self._broker_id)


def _until_recorded(call: Callable[[], None]) -> None:
    """dramatiq's own ack or nack, with a Redis that answers an error reply for a while (OOM,
    BUSY, READONLY...) made a connection error: dramatiq then retries the post-processing every
    second without acking; it would otherwise log a ``ResponseError`` as a bug and leave the
    delivery in the ack set until the worker restarts (its ack script's first write is the
    heartbeat ``ZADD``, which ``-OOM`` refuses)."""
    try:
        with map_exceptions():
            call()
    except StoreUnavailable as exc:
        raise BrokerConnectionError(f"ack deferred: {exc}") from exc  # type: ignore[no-untyped-call]


def _skip_acked_acks(broker: dramatiq.Broker) -> None:
    """Make ``broker``'s consumers skip the ack of deliveries ``complete.lua`` acked already,
    and wake on their queue's bell instead of sleeping out their back-off (``_bell``).

    Only a RedisBroker consumer that keeps the ``queued_message_ids`` set is wrapped (the ack
    it skips would only have removed the id from that set and found nothing left to do in
    Redis); any other consumer acks as usual, which stays correct, just one round trip dearer.
    """
    original = broker.consume
    doorbell = Doorbell(
        getattr(broker, "client"),  # noqa: B009 - checked by shares_store_redis
        namespace_of(broker),
        str(getattr(broker, "broker_id", "")),
    )

    def consume(*args: Any, **kwargs: Any) -> Consumer:
        consumer = original(*args, **kwargs)
        ids: object = getattr(consumer, "queued_message_ids", None)
        if not isinstance(ids, set):
            return consumer
        pending = cast("set[str]", ids)  # dramatiq's message ids of fetched deliveries
        ack, nack = consumer.ack, consumer.nack

        def ack_unless_done(message: MessageProxy) -> None:
            if getattr(message, _ACKED, False):
                pending.discard(message.message_id)
            else:
                _until_recorded(lambda: ack(message))

        consumer.ack = ack_unless_done  # type: ignore[method-assign]
        consumer.nack = lambda message: _until_recorded(lambda: nack(message))  # type: ignore[method-assign]
        queue: object = getattr(consumer, "queue_name", None)
        fetch: object = getattr(getattr(consumer, "broker", None), "do_fetch", None)
        if not hasattr(consumer, "message_cache") or fetch is None or not isinstance(queue, str):
            return consumer  # not the RedisBroker consumer BellConsumer knows: it polls as is
        return BellConsumer(consumer, doorbell)

    setattr(broker, "consume", consume)  # noqa: B010 - an instance attribute over the method
