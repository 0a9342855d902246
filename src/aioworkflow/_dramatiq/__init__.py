"""The dramatiq adapter: every detail of dramatiq and its RedisBroker that aioworkflow uses.

Nothing outside this package names a RedisBroker key, a consumer, or a MessageProxy internal
(``tests/test_layering.py`` checks it). What each module owns:

* ``_redis_broker``: RedisBroker key names (queue lists and ``.msgs`` hashes, ack sets,
  heartbeats), the probe for "this broker is on the store's Redis", and the ack shortcut
  (``complete.lua`` acks the delivery; the wrapped consumer skips its own ack).
* ``_bell``: push-woken consumers: the per-queue bell the direct-mode scripts ring, the
  process's doorbell thread, and the consumer wrapper whose idle back-off the bell ends.
* ``_route``: the per-workflow ``Route`` (direct: the scripts enqueue; ready: the caller
  enqueues what the scripts released), the only reader of ``Loaded.mode``.
* ``_enqueue``: dramatiq messages for released nodes and callbacks, sent through the broker,
  with the test-only ``fault_after_barrier`` seam.
* ``_proxy``: the piped input swapped into a ``MessageProxy``, and the exception it recorded.

The store speaks workflow terms only: it receives queue keys and ack keys as opaque strings.
"""

from __future__ import annotations

from ._enqueue import as_callback, build_message, enqueue_released
from ._proxy import failure_of, pipe_input
from ._redis_broker import AckShortcut, mark_acked, queue_keys, shares_store_redis
from ._route import DirectRoute, ReadyRoute, Route, direct_mode, route_for

__all__ = [
    "AckShortcut",
    "DirectRoute",
    "ReadyRoute",
    "Route",
    "as_callback",
    "build_message",
    "direct_mode",
    "enqueue_released",
    "failure_of",
    "mark_acked",
    "pipe_input",
    "queue_keys",
    "route_for",
    "shares_store_redis",
]
