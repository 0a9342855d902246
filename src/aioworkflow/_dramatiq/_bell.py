"""Push-woken RedisBroker consumers: the doorbell the direct-mode scripts ring.

dramatiq's Redis consumer polls: after an empty fetch it sleeps 5 ms x 2^misses (jittered), up
to the worker timeout (1 s by default), so an idle worker picks a message up only at its next
poll. Every direct-mode script that pushes a message into ``<ns>:<queue>`` also pushes a ring
onto ``<ns>:<queue>.bell`` in the same atomic step (``push`` in ``lua/_lib.lua``; at most
``BELL_DEPTH`` rings per queue and script, the list trimmed to that length: one wake-up per
waiting worker process on a bulk release, and stale rings stay bounded when nobody listens).

In the worker, :class:`BellConsumer` wraps dramatiq's consumer and replaces its back-off sleep
with a wait on the bell of its queue, for the same time: a ring ends the wait at once. One
:class:`Doorbell` thread per process blocks (``BLPOP``) on the bells of every queue its
consumers read, on one connection, and wakes the consumer of the queue that rang.

Messages stay dramatiq's own, in dramatiq's queues: plain dramatiq producers do not ring, and
a worker then fetches their messages at its normal back-off; plain dramatiq workers never read
the bells. Delayed messages go to ``<queue>.DQ`` (whose consumer is woken the same way) and are
moved to ``<queue>`` by dramatiq's worker when their eta passes, with a plain enqueue: they
start up to one back-off (at most the worker timeout) after their eta.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import TYPE_CHECKING, Any, final

import redis
from dramatiq.broker import Consumer
from dramatiq.common import compute_backoff
from dramatiq.errors import ConnectionClosed

if TYPE_CHECKING:
    from dramatiq.broker import MessageProxy

__all__ = ["BELL_DEPTH", "BellConsumer", "Doorbell", "bell_key"]

#: Rings kept per queue (and pushed per script at most): how many waiting worker processes a
#: bulk release wakes at once; the others find the messages at their next fetch.
BELL_DEPTH = 8
#: How long one BLPOP blocks (seconds). Registration of a new queue interrupts it (the wake key),
#: so this only bounds how often an idle process issues it: rarely, to keep idle traffic down.
_BLOCK_S = 30
#: Pause after a failed BLPOP (Redis down): the consumers keep polling on their own meanwhile.
_RETRY_S = 1.0


def bell_key(namespace: str, queue: str) -> str:
    """The list a direct-mode script rings when it pushes into ``queue``."""
    return f"{namespace}:{queue}.bell"


@final
class Doorbell:
    """One blocking connection per process, waiting on the bells of the consumed queues."""

    def __init__(self, client: Any, namespace: str, broker_id: str) -> None:
        self._client = client
        self._namespace = namespace
        # a process-private key: a registration pushes onto it to restart the BLPOP with the
        # new queue included (nobody else ever writes it)
        self._wake = f"{namespace}:__aiowf_bell__.{broker_id}"
        self._lock = threading.Lock()
        self._events: dict[str, threading.Event] = {}
        self._users: dict[str, int] = {}  # consumers per bell (two workers in one process)
        self._thread: threading.Thread | None = None
        # a client with a socket timeout would cut a longer BLPOP short with an error
        pool: Any = getattr(client, "connection_pool", None)
        kwargs: dict[str, Any] = dict(getattr(pool, "connection_kwargs", None) or {})
        limit: Any = kwargs.get("socket_timeout")
        self._block = _BLOCK_S
        if isinstance(limit, (int, float)) and limit > 0:
            self._block = max(1, min(_BLOCK_S, int(limit) - 1))

    def register(self, queue: str) -> threading.Event:
        """The event set when ``queue``'s bell rings (the waiting thread starts on first use)."""
        key = bell_key(self._namespace, queue)
        with self._lock:
            self._users[key] = self._users.get(key, 0) + 1
            event = self._events.get(key)
            if event is not None:
                return event
            event = self._events[key] = threading.Event()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="aioworkflow-doorbell", daemon=True
                )
                self._thread.start()
                return event
        self._nudge()
        return event

    def unregister(self, queue: str) -> None:
        """A consumer of ``queue`` closed; the thread ends with the last one."""
        key = bell_key(self._namespace, queue)
        with self._lock:
            left = self._users.get(key, 0) - 1
            if left > 0:
                self._users[key] = left
                return
            self._users.pop(key, None)
            self._events.pop(key, None)
        self._nudge()

    def _nudge(self) -> None:
        # restart the BLPOP with the current bells; best effort: on failure the BLPOP picks
        # the change up on its next turn (the consumers poll on their own meanwhile)
        with contextlib.suppress(Exception):
            self._client.lpush(self._wake, "1")

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._events:
                    self._thread = None
                    break
                keys = [*self._events, self._wake]
            try:
                got: Any = self._client.blpop(keys, timeout=self._block)
            except Exception:  # noqa: BLE001 - any Redis failure: consumers still poll
                time.sleep(_RETRY_S)
                continue
            if got is None:
                continue
            key = got[0].decode() if isinstance(got[0], bytes) else str(got[0])
            event = self._events.get(key)
            if event is not None:
                event.set()
        # nobody listens any more: drop the nudges left behind
        with contextlib.suppress(Exception):
            self._client.delete(self._wake)


class BellConsumer(Consumer):
    """A RedisBroker consumer whose idle back-off ends early when its queue's bell rings.

    It fetches exactly as dramatiq's consumer does (its ``do_fetch`` into its message cache)
    and then lets that consumer hand the message out; only the sleep after an empty fetch is
    replaced, by a wait of the same length on the bell. The back-off is not jittered: rings
    make a short wait useless for aioworkflow's messages, and waiting the full back-off keeps
    an idle worker's fetches at or below dramatiq's rate, the doorbell's rare BLPOP included.
    """

    def __init__(self, inner: Any, doorbell: Doorbell) -> None:
        self._inner = inner
        self._doorbell = doorbell
        self._bell = doorbell.register(inner.queue_name)
        self._misses = 0

    @property
    def outstanding_message_count(self) -> int:
        """Fetched messages not yet acked or nacked (dramatiq's own count)."""
        return int(self._inner.outstanding_message_count)

    def ack(self, message: MessageProxy) -> None:
        self._inner.ack(message)

    def nack(self, message: MessageProxy) -> None:
        self._inner.nack(message)

    def requeue(self, messages: Any) -> None:
        self._inner.requeue(messages)

    def close(self) -> None:
        self._doorbell.unregister(self._inner.queue_name)
        self._inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __next__(self) -> MessageProxy | None:
        try:
            return self._next()
        except redis.ConnectionError as e:
            raise ConnectionClosed(e) from None  # type: ignore[no-untyped-call]  # as dramatiq does

    def _next(self) -> MessageProxy | None:
        inner = self._inner
        if not inner.message_cache:
            room = inner.prefetch - inner.outstanding_message_count
            # cleared before the fetch: a ring that lands after it ends the wait below
            self._bell.clear()
            if room > 0:
                fetched = inner.broker.do_fetch(inner.queue_name, room)
                if fetched:
                    inner.message_cache = fetched
            if not inner.message_cache:
                self._misses, backoff_ms = compute_backoff(
                    self._misses, max_backoff=inner.timeout, jitter=False
                )
                if room > 0:
                    self._bell.wait(backoff_ms / 1000)
                else:
                    # every slot is taken: a ring could not be served anyway
                    time.sleep(backoff_ms / 1000)
                return None
        self._misses = 0
        message: MessageProxy | None = next(inner)
        return message
